"""`python -m bench.tree_repo <path> [n]`: the repository the VS Code tree benchmark opens
(client-vscode/test/bench/treeE2e.ts). `n` workstreams (10,000 by default) made in bulk as the
list10k scenario makes them (`bench.scale.bulk`: creating them one by one takes most of an hour),
with the harness `true`, so that running one changes its status at once."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.fixtures import make_repo
from bench.scale import LIST_N, bulk


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2) or not (len(argv) == 1 or argv[1].isdigit()):
        sys.exit("usage: python -m bench.tree_repo <path (a new folder)> [n (a whole number)]")
    path = Path(argv[0])
    if path.exists():
        sys.exit(f"{path} exists: give a new folder")
    asyncio.run(bulk(make_repo(path, ["true"]), int(argv[1]) if len(argv) == 2 else LIST_N))


if __name__ == "__main__":
    main(sys.argv[1:])
