"""The harness `aidp demo` runs: pretends to work on its task for a few seconds, printing progress
and reporting it to aidp (`$AIDP_PROGRESS`), then writes a file in its worktree and commits it.
Stdlib only; no network, no AI service.

    python demo_harness.py <slug> <task> <seconds>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("reading the code", "planning", "editing", "running the tests", "writing it up")


def main(argv: list[str]) -> int:
    slug, task, seconds = argv[0], argv[1], float(argv[2])
    for i, step in enumerate(STEPS, start=1):
        print(f"[{slug}] step {i}/{len(STEPS)}: {step}", flush=True)
        report({"percent": round(100 * (i - 1) / len(STEPS)), "message": step})
        time.sleep(seconds / len(STEPS))
    notes = Path("notes") / f"{slug}.md"
    notes.parent.mkdir(exist_ok=True)
    notes.write_text(f"# {slug}\n\n{task}\n\nDone by the aidp demo harness.\n", encoding="utf-8")
    subprocess.run(["git", "add", "--", str(notes)], check=True)
    subprocess.run(["git", "commit", "-q", "-m", f"{slug}: {task}"], check=True)
    print(f"[{slug}] committed {notes}", flush=True)
    return 0


def report(progress: dict[str, object]) -> None:
    """One progress report, as any harness may append them (run outside aidp: none)."""
    if path := os.environ.get("AIDP_PROGRESS"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(progress) + "\n")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
