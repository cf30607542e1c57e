"""`python -m bench [--quick]`: run every scenario, print the table, write docs/benchmarks.md.

The full run writes the docs (and its plots); `--quick` is a smoke run with fewer workstreams and
repetitions that only prints, unless `--docs` is given, so it never overwrites the real figures.
`--only A,B --docs` (full sizes) replaces just those scenarios' sections in the existing page.
`--check` measures (the overhead scenario, or `--only`) and compares the ratios with the page's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import (
    check,
    cluster,
    conflicts,
    containment,
    flood,
    makespan,
    memory,
    order,
    overhead,
    retention,
    sandbox,
    scale,
    startup,
)
from bench.common import Params, Section
from bench.report import machine_info, merge_docs, print_table, write_docs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

SCENARIOS: dict[str, Callable[[Params], Coroutine[Any, Any, list[Section]]]] = {
    "overhead": overhead.run,
    "makespan": makespan.run,
    "flood": flood.run,
    "memory": memory.run,
    "startup": startup.run,
    "containment": containment.run,
    "conflicts": conflicts.run,
    "sandbox": sandbox.run,
    "order": order.run,
    "retention": retention.run,
    "scale": scale.run,
    "list10k": scale.run_list,
    "ray": cluster.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer workstreams and repetitions")
    parser.add_argument("--only", metavar="A,B", help=f"run only these scenarios ({', '.join(SCENARIOS)})")
    parser.add_argument("--docs", action="store_true", help="write docs with --quick (all), --only (merged)")
    parser.add_argument("--no-docs", action="store_true", help="never write docs/benchmarks.md")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (repos, logs)")
    parser.add_argument("--render", type=Path, metavar="PATH", help="only rewrite the docs from a --json file")
    parser.add_argument(
        "--check", action="store_true", help="compare ratios with the committed page (overhead, or --only)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=check.DEFAULT_TOLERANCE, help="--check: growth that counts (0.15)"
    )
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    chosen = args.only.split(",") if args.only else ["overhead"] if args.check else list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    work = Path(tempfile.mkdtemp(prefix="aidp-bench-"))
    params = Params.for_mode(args.quick, work)
    started = time.monotonic()
    load_at_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    sections: list[Section] = []
    try:
        for name in chosen:
            print(f"== {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            sections += asyncio.run(SCENARIOS[name](params))
            print(f"   {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"scratch directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    machine = machine_info()
    machine["load average at the start (1, 5, 15 min)"] = load_at_start
    machine["bench wall time"] = f"{time.monotonic() - started:.0f} s ({'--quick' if args.quick else 'full'})"
    print_table(sections, machine)
    if args.json:
        saved = {"machine": machine, "quick": args.quick, "sections": [dataclasses.asdict(s) for s in sections]}
        args.json.write_text(json.dumps(saved, indent=1))
    if args.check:
        return check.report(check.compare(sections, check.committed_ratios(DOCS)), args.tolerance)
    complete = not args.quick and not args.only
    if args.no_docs or not (args.docs or complete):
        return 0
    if args.only and not args.quick and DOCS.exists():
        merge_docs(DOCS, sections, machine)
        print(f"updated {', '.join(chosen)} in {DOCS}", file=sys.stderr)
    else:
        write_docs(DOCS, sections, machine, quick=args.quick)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0


def render(path: Path) -> int:
    """Rewrite the docs from saved figures: after editing bench/findings.md, no need to re-measure."""
    saved = json.loads(path.read_text())
    sections = [Section.from_json(s) for s in saved["sections"]]
    print_table(sections, saved["machine"])
    write_docs(DOCS, sections, saved["machine"], quick=saved["quick"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
