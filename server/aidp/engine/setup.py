"""Ready worktrees: where they go (`[worktree] dir`), the files copied into each from the main
checkout (`[worktree] copy`, typically git-ignored ones like `.env`) and the command run once in
each (`[worktree] setup`, like `npm ci`).

A setup is recorded on the workstream (`SetupState`: running, then ok or failed with the reason)
and logged like a run, in its own log file. A workstream whose setup failed (or still runs) cannot
run: `ws run` refuses it and `ws run-all` records it blocked, both saying why, until
`aidp ws setup <slug>` redoes it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from aidp.engine import cgroups, gitrepo, oneshot, procs
from aidp.engine.config import DEFAULT_WORKTREES_DIR, Config, load_config
from aidp.engine.errors import ConfigError
from aidp.engine.executor import LogTail
from aidp.engine.model import SetupState, Workstream, utc_now
from aidp.engine.store import AsyncStore

SAID_LINES = 5  # of a failed setup's output, in its error


def worktrees_dir(root: Path, configured: str) -> Path:
    """Where new worktrees go: `configured` relative to the repository root, or absolute. Never the
    root itself, nor inside git's or aidp's own folders."""
    path = (root / configured).resolve()
    own = [root / ".git", root / gitrepo.STATE_DIR]
    if path == root or any(path == p or path.is_relative_to(p) for p in own):
        raise ConfigError(
            f"[worktree] dir {configured!r} is {path}: worktrees cannot go in the repository root, .git or "
            f"{gitrepo.STATE_DIR}; use a folder of their own (default {DEFAULT_WORKTREES_DIR!r})"
        )
    return path


def configured_dir(root: Path) -> Path:
    """The configured worktrees folder; the default when the config is broken, so that opening the
    state (which must not fail on a typo) still finds what aidp made there."""
    try:
        return worktrees_dir(root, load_config(root / gitrepo.STATE_DIR).worktree.dir)
    except ConfigError:
        return root / DEFAULT_WORKTREES_DIR


def ignore_pattern(root: Path, folder: Path) -> str | None:
    """The `info/exclude` line that keeps a worktrees folder inside the repository out of the user's
    `git status` (None outside it, or for the default folder, which is always excluded)."""
    if folder == root / DEFAULT_WORKTREES_DIR or not folder.is_relative_to(root):
        return None
    return f"/{folder.relative_to(root).as_posix()}/"


def copy_files(root: Path, worktree: Path, patterns: list[str], skip: list[Path]) -> list[str]:
    """Copy the files the glob `patterns` match in the main checkout into the same places in the
    worktree (following symlinks); never from git's, aidp's or the worktrees' own folders (`skip`).
    Returns the copied paths, relative, in order."""
    copied: dict[str, None] = {}
    for pattern in patterns:
        for source in sorted(root.glob(pattern)):
            if not source.is_file() or any(source == s or source.is_relative_to(s) for s in skip):
                continue
            relative = source.relative_to(root)
            target = worktree / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied[relative.as_posix()] = None
    return list(copied)


def configured(config: Config) -> bool:
    """Whether there is anything to make ready: files to copy or a setup command."""
    return bool(config.worktree.copy or config.worktree.setup)


async def prepare(
    root: Path, ws: Workstream, config: Config, db: AsyncStore, logs_dir: Path, worktrees: Path
) -> SetupState:
    """Copy the configured files into the workstream's worktree and run the setup command there,
    recording each step on the workstream (as events too). A cancellation (Ctrl-C) ends the setup's
    processes and records it failed before it goes on."""
    worktree = Path(ws.path)
    skip = [root / ".git", root / gitrepo.STATE_DIR, worktrees]
    try:
        copied = await asyncio.to_thread(copy_files, root, worktree, config.worktree.copy, skip)
    except OSError as exc:
        failed = SetupState(status="failed", error=f"cannot copy files into {worktree}: {exc}", finished_at=utc_now())
        await db.call(db.store.set_setup, ws.slug, failed, f"setup failed: {failed.error}")
        return failed
    said = _copied_text(copied, config.worktree.copy)
    command = config.worktree.setup
    if command is None:
        state = SetupState(status="none", copied=copied, finished_at=utc_now())
        await db.call(db.store.set_setup, ws.slug, state, said or "no setup command configured")
        return state
    stamp = f"setup-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    log_path = logs_dir / ws.slug / f"{stamp}.log"
    running = SetupState(status="running", log_path=str(log_path), command=command, copied=copied)
    started = f"setup started: {shlex.join(command)}"
    await db.call(db.store.set_setup, ws.slug, running, f"{said}; {started}" if said else started)

    async def record(pid: int, pid_start: int | None) -> None:
        await db.call(db.store.set_setup, ws.slug, msgspec.structs.replace(running, pid=pid, pid_start=pid_start))

    env = _environment(root, ws, stamp)
    try:
        outcome = await oneshot.run_contained(
            command,
            worktree,
            env,
            log_path,
            config.worktree.setup_timeout_s,
            config.harness.grace_s,
            cgroups.place(stamp, ws.slug),
            procs.marker(stamp, ws.slug),
            record,
        )
    except asyncio.CancelledError:
        await _record_end(db, ws.slug, running, "cancelled (aidp was stopped)")
        raise
    except OSError as exc:
        return await _record_end(db, ws.slug, running, f"cannot write its log {log_path}: {exc.strerror or exc}")
    except sqlite3.Error as exc:  # from `record`: it was ended before it ran
        return await _record_end(db, ws.slug, running, f"could not record its start, so it did not run: {exc}")
    if outcome.ok:
        return await _record_end(db, ws.slug, running, None, f"setup ok ({outcome.duration_s:g} s)")
    return await _record_end(db, ws.slug, running, f"{outcome.error}{_last_lines(log_path)}")


async def _record_end(
    db: AsyncStore, slug: str, running: SetupState, error: str | None, message: str | None = None
) -> SetupState:
    state = msgspec.structs.replace(running, status="failed" if error else "ok", error=error, finished_at=utc_now())
    await db.call(db.store.set_setup, slug, state, message or f"setup failed: {error}")
    return state


async def interrupted(db: AsyncStore, slug: str, message: str, wait_s: float) -> None:
    """The process setting `slug` up died: what its setup left running is ended (SIGKILL after
    `wait_s`), and the setup recorded failed. The setup's id, its marker and cgroup name, is its
    log's name."""
    state = (await db.call(db.store.setup_states)).get(slug)
    if state is None or state.status != "running":
        return
    if state.log_path is not None:
        stamp = Path(state.log_path).stem
        marker, place = procs.marker(stamp, slug), cgroups.place(stamp, slug)
        await oneshot.end_left(marker, place, state.pid, state.pid_start, wait_s)
    failed = msgspec.structs.replace(
        state, status="failed", error=message, finished_at=utc_now(), pid=None, pid_start=None
    )
    await db.recovery_write(
        f"{slug}: setup failed: {message}", db.store.set_setup, slug, failed, f"setup failed: {message}"
    )


def _last_lines(log_path: Path) -> str:
    """The end of a failed setup's output, which usually says why (after a newline), or ''."""
    try:
        tail = LogTail(log_path)
    except OSError:
        return ""
    try:
        lines = tail.last_lines(SAID_LINES)
    finally:
        tail.close()
    return f"\n{lines}" if lines else ""


def _copied_text(copied: list[str], patterns: list[str]) -> str:
    if copied:
        return f"copied from the main checkout: {', '.join(copied)}"
    if patterns:
        return f"copied nothing: no file of the main checkout matches {', '.join(patterns)}"
    return ""


def _environment(root: Path, ws: Workstream, marker: str) -> dict[str, str]:
    """aidp's environment and the workstream's AIDP_* variables; AIDP_RUN_ID is the setup's own id,
    the marker by which its processes are found."""
    env = dict(os.environ)
    env.update(
        AIDP_SLUG=ws.slug,
        AIDP_RUN_ID=marker,
        AIDP_WORKTREE=ws.path,
        AIDP_BRANCH=ws.branch,
        AIDP_ROOT=str(root),
    )
    return env


def unchanged_copies(root: Path, worktree: Path, copied: list[str]) -> set[str]:
    """The copied files still the same in the worktree as in the main checkout: removing the
    worktree loses nothing of them."""
    same = set()
    for relative in copied:
        try:
            if (worktree / relative).read_bytes() == (root / relative).read_bytes():
                same.add(relative)
        except OSError:
            continue
    return same
