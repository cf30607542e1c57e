"""`aidp ws diff | conflicts | land | sync | push`: review a workstream's work and land it. Each
handler calls the engine (see engine/review.py) and prints."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from aidp.cli.base import EXIT_FAILURE, EXIT_OK, Args
from aidp.cli.commands import print_json
from aidp.cli.patterns import expand
from aidp.engine import Engine
from aidp.engine.model import Diff, FileChange

CLI_DIFF_MAX_BYTES = 256 * 1024 * 1024  # the engine's 1 MiB default suits the wire; a terminal may want more
DEFAULT_PAGER = ["less", "-FRX"]


async def ws_diff(engine: Engine, args: Args) -> int:
    diff = await engine.diff(args.slug, base=args.base, max_bytes=CLI_DIFF_MAX_BYTES)
    if args.json:
        print_json(diff)
        return EXIT_OK
    if args.name_only:
        text = "\n".join([f.path for f in diff.files] + _marked("uncommitted", [f.path for f in diff.uncommitted]))
    elif args.stat:
        text = "\n".join(_stat(diff.files) + _marked("uncommitted", _stat(diff.uncommitted)))
    else:
        text = _patch(diff)
    page(text + "\n" if text else "")
    return EXIT_OK


def _marked(title: str, lines: list[str]) -> list[str]:
    return [f"# {title}:", *lines] if lines else []


def _stat(files: list[FileChange]) -> list[str]:
    """`git diff --stat`-like lines: path, lines added and removed ("binary" for a binary file)."""
    width = max((len(_name(f)) for f in files), default=0)
    lines = [f" {_name(f):<{width}} | " + ("binary" if f.added is None else f"+{f.added} -{f.removed}") for f in files]
    if files:
        added, removed = sum(f.added or 0 for f in files), sum(f.removed or 0 for f in files)
        lines.append(f" {len(files)} file{'s' if len(files) != 1 else ''} changed, +{added} -{removed}")
    return lines


def _name(f: FileChange) -> str:
    return f"{f.old_path} => {f.path}" if f.old_path else f.path


def _patch(diff: Diff) -> str:
    """The committed patch under a header naming what it is against, then the uncommitted work
    under its own header, so neither is mistaken for the other."""
    since = f"merge-base {diff.merge_base[:12]}" if diff.merge_base else "no merge-base"
    parts = [f"# committed on the workstream's branch, against {diff.base_branch} ({since}):\n"]
    parts.append(diff.patch or "# (no committed changes)\n")
    if diff.uncommitted:
        parts.append(f"# uncommitted changes in the worktree of {diff.slug} (not committed yet):\n")
        parts.append(diff.uncommitted_patch)
    if diff.truncated:
        parts.append(f"# (cut at {CLI_DIFF_MAX_BYTES} bytes; see 'git diff' for the rest)\n")
    return "".join(parts).rstrip("\n")


def page(text: str) -> None:
    """Print `text`; on a terminal through `$PAGER` (else `less -FRX`), as git does. The pager
    is run from its argument list, never through a shell."""
    pager = shlex.split(os.environ.get("PAGER", "")) or DEFAULT_PAGER
    if not sys.stdout.isatty() or pager == ["cat"]:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    try:
        subprocess.run(pager, input=text, text=True, check=False)
    except OSError:  # no such pager: print instead
        sys.stdout.write(text)


async def ws_conflicts(engine: Engine, args: Args) -> int:
    """Exit 1 when any workstream conflicts with its base branch or with another."""
    report = await engine.conflicts(args.slugs or None)
    if args.json:
        print_json(report)
    else:
        width = max((len(c.slug) for c in report.with_base), default=0)
        lines = [
            f"{c.slug:<{width}}  "
            + (f"merges cleanly into {c.base_branch}" if c.clean else f"CONFLICTS with {c.base_branch}: ")
            + ", ".join(c.files)
            for c in report.with_base
        ]
        if len(report.with_base) > 1:
            lines.append("conflicting pairs:" if report.pairs else "no two of them conflict with each other")
        lines += [f"  {p.a} <-> {p.b}: {', '.join(p.files)}" for p in report.pairs]
        print("\n".join(lines), flush=True)
    clean = all(c.clean for c in report.with_base) and not report.pairs
    return EXIT_OK if clean else EXIT_FAILURE


async def ws_land(engine: Engine, args: Args) -> int:
    """A refusal is `CannotLand`: main prints its message (the reason, the files, what landed)."""
    slugs = await expand(engine, args.slugs)
    results = await engine.land(slugs, strategy=args.strategy, into=args.into, rm=args.rm)
    if args.json:
        print_json(results)
    for r in [] if args.json else results:
        removed = "; removed its worktree and branch" if r.removed else ""
        print(f"landed {r.slug} into {r.into} ({r.strategy}): {r.into} is now {r.commit[:12]}{removed}", flush=True)
    return EXIT_OK


async def ws_sync(engine: Engine, args: Args) -> int:
    result = await engine.sync(args.slug, strategy=args.strategy)
    if args.json:
        print_json(result)
        return EXIT_OK
    print(f"{result.slug} is up to date with its base branch ({result.strategy}): at {result.head[:12]}", flush=True)
    return EXIT_OK


async def ws_push(engine: Engine, args: Args) -> int:
    result = await engine.push(args.slug, remote=args.remote, pr=args.pr)
    if args.json:
        print_json(result)
        return EXIT_OK
    print(f"pushed {result.branch} to {result.remote}", flush=True)
    if result.pr_url:
        print(f"pull request: {result.pr_url}", flush=True)
    return EXIT_OK
