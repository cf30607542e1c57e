"""The harness of the output-latency measure (bench/cluster.py): prints the wall clock `n` times,
`delay` seconds apart, each line flushed, so a client can tell how old each line is on arrival.

Usage: python stamp_harness.py N DELAY_S
"""

import sys
import time

n, delay = int(sys.argv[1]), float(sys.argv[2])
for _ in range(n):
    print(f"{time.time():.6f}", flush=True)
    time.sleep(delay)
