"""`aidp init` (a commented `.aidp/config.toml` for a coding agent found on PATH), `aidp doctor`
(what stands between this repository and a good run) and the task of `ws new --task-file`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec

from aidp.cli.base import EXIT_FAILURE, EXIT_OK, Args
from aidp.engine import gitrepo, presets
from aidp.engine.config import CONFIG_NAME
from aidp.engine.doctor import diagnose
from aidp.engine.errors import AidpError, InvalidInput

MARKS = {"ok": "ok", "warning": "warning", "problem": "PROBLEM"}


def main_init(args: Args) -> int:
    root = gitrepo.find_root(gitrepo.current_dir())
    path = root / gitrepo.STATE_DIR / CONFIG_NAME
    if path.exists() and not args.force:
        raise AidpError(f"{path} exists; 'aidp init --force' replaces it (or edit it)")
    found = presets.detect()
    preset = presets.PRESETS[args.preset] if args.preset else _choose(found)
    path.parent.mkdir(parents=True, exist_ok=True)
    gitrepo.ensure_ignored(root)
    path.write_text(presets.config_text(preset), encoding="utf-8")
    if preset is None:
        print(f"wrote {path}: no known agent is on PATH; set [harness] command in it")
    else:
        print(f"wrote {path} for {preset.title} (preset {preset.name})")
        if preset not in found:
            print(f"note: {preset.program!r} is not on PATH yet; install it before running workstreams")
    return EXIT_OK


def _choose(found: list[presets.Preset]) -> presets.Preset | None:
    """The one agent found; several: the user's pick on a terminal, else a refusal naming them."""
    if len(found) <= 1:
        return found[0] if found else None
    listed = ", ".join(p.name for p in found)
    if not sys.stdin.isatty():
        raise InvalidInput(f"several agents are on PATH ({listed}); choose one with 'aidp init --preset NAME'")
    for number, preset in enumerate(found, 1):
        print(f"  {number}. {preset.title} ({preset.name}): {' '.join(preset.argv)}")
    while True:
        answer = input(f"which agent should workstreams run? [1-{len(found)}, default 1] ").strip() or "1"
        if answer.isdigit() and 1 <= int(answer) <= len(found):
            return found[int(answer) - 1]
        if answer in presets.PRESETS and presets.PRESETS[answer] in found:
            return presets.PRESETS[answer]
        print(f"answer a number from 1 to {len(found)}, or one of {listed}")


def main_doctor(args: Args) -> int:
    report = asyncio.run(diagnose(gitrepo.find_root(gitrepo.current_dir())))
    if args.json:
        print(msgspec.json.encode(report).decode(), flush=True)
    else:
        for finding in report.findings:
            print(f"{MARKS[finding.level]:>7}  {finding.check}: {finding.message}")
            if finding.fix:
                print(f"{'':>7}  -> {finding.fix}")
        problems = sum(f.level == "problem" for f in report.findings)
        warnings = sum(f.level == "warning" for f in report.findings)
        print(f"{problems} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def task_of(args: Args) -> str:
    """`ws new`'s task: its words, or the text of `--task-file` (`-`: standard input), which
    carries a task longer than one command-line argument may be (the engine bounds its size)."""
    if args.task_file is None:  # the parser takes one or the other
        return " ".join(args.task)
    try:
        data = sys.stdin.buffer.read() if args.task_file == "-" else Path(args.task_file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the task file {args.task_file}: {exc.strerror or exc}") from exc
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the task file {args.task_file} is not UTF-8 text: {exc}") from exc
