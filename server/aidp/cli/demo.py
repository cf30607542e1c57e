"""`aidp demo`: five workstreams in a throwaway repository, run in parallel with the live view,
to show the speed-up over running them one after another. Needs git and nothing else."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aidp.cli import demo_harness
from aidp.cli.base import Args
from aidp.cli.commands import print_summary
from aidp.cli.live import choose_view, watch_run
from aidp.engine import Engine, RunSummary
from aidp.engine.config import CONFIG_NAME
from aidp.engine.errors import GitError
from aidp.engine.gitrepo import STATE_DIR

# (slug, task, seconds of pretend work)
WORKSTREAMS = (
    ("fix-login", "Fix the login redirect loop", 3.0),
    ("add-search", "Add search to the product list", 4.5),
    ("dark-mode", "Support a dark color scheme", 2.0),
    ("upgrade-deps", "Upgrade the web framework", 3.5),
    ("write-docs", "Document the public API", 2.5),
)


def git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GitError(f"git {' '.join(args)} failed: {getattr(exc, 'stderr', None) or exc}") from exc
    return done.stdout


def init_repository(root: Path) -> None:
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "aidp demo")
    git(root, "config", "user.email", "demo@aidp.invalid")
    git(root, "config", "commit.gpgsign", "false")
    (root / "README.md").write_text("# A demo project\n", encoding="utf-8")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "First commit")


async def run_demo(root: Path, max_concurrent: int) -> RunSummary:
    # The throwaway repository's own bound, so the demo runs as many at once as asked (a run's
    # --max-concurrent can only lower the repository's bound, 3 by default).
    state = root / STATE_DIR
    state.mkdir()
    (state / CONFIG_NAME).write_text(f"[scheduler]\nmax_concurrent = {max_concurrent}\n", encoding="utf-8")
    engine = await Engine.open(root)
    try:
        for slug, task, seconds in WORKSTREAMS:
            command = [sys.executable, demo_harness.__file__, "{slug}", "{task}", str(seconds)]
            await engine.create(slug, task, command=command)
        print(f"running {len(WORKSTREAMS)} workstreams, at most {max_concurrent} at once\n", flush=True)
        slugs = [slug for slug, _, _ in WORKSTREAMS]
        return await watch_run(engine, lambda: engine.start(slugs, max_concurrent), choose_view(False))
    finally:
        await engine.close()


def main_demo(args: Args) -> int:
    root = Path(tempfile.mkdtemp(prefix="aidp-demo-"))
    print(f"demo repository: {root}")
    try:
        init_repository(root)
        summary = asyncio.run(run_demo(root, args.max_concurrent))
        print()
        code = print_summary(summary, as_json=False)
        total, wall = sum(r.duration_s or 0.0 for r in summary.results), summary.wall_s
        if wall > 0:
            print(f"speed-up: {total / wall:.1f}x (sum of durations {total:.1f} s, wall {wall:.1f} s)")
        print("\nthe branches, each with its workstream's commit:")
        for slug, _, _ in WORKSTREAMS:
            print(f"$ git log --oneline -1 aidp/{slug}\n{git(root, 'log', '--oneline', '-1', f'aidp/{slug}').rstrip()}")
    finally:
        if args.keep:
            print(f"\nkept the demo repository: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code
