"""A list asks `git status` only of worktrees where something changed since git last answered
(`aidp.engine.dirty`, issue 13: one git process per workstream per list is seconds at thousands),
and what it shows is never stale: an edit in place, a new file, a commit, an exclude rule all show
in the next list. Which worktrees git was asked about is read from a real `core.fsmonitor` hook
that git runs for every status."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from support import git, wait_until_sync

from aidp.engine import Engine
from aidp.engine.dirty import CACHE_FILE, RACY_NS, WALK_MAX


def watch_status(repo: Path, tmp_path: Path) -> Path:
    """A `core.fsmonitor` hook logging the worktree of every git command that reads one."""
    log, hook = tmp_path / "asked.log", tmp_path / "fsmonitor-hook"
    hook.write_text(f'#!/bin/sh\necho "$PWD" >> "{log}"\nexit 1\n')
    hook.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(hook))
    log.touch()
    return log


def asked(log: Path, since: int) -> list[str]:
    """The worktrees' names git read since line `since` of the log."""
    return sorted({Path(line).name for line in log.read_text().splitlines()[since:]})


def lines(log: Path) -> int:
    return len(log.read_text().splitlines())


def settle(tmp_path: Path) -> None:
    """Wait until everything made so far is older than the racy window (file times tick coarsely),
    so that an answer git gives now can be reused."""
    newest = max(os.lstat(os.path.join(d, n)).st_ctime_ns for d, ds, fs in os.walk(tmp_path) for n in ds + fs)
    wait_until_sync(lambda: time.time_ns() > newest + RACY_NS + 10_000_000, what="the racy window to pass")


async def dirty(engine: Engine) -> dict[str, bool | None]:
    return {ws.slug: ws.changes.dirty if ws.changes else None for ws in await engine.workstreams()}


async def test_only_a_changed_worktree_is_asked_again(engine: Engine, repo: Path, tmp_path: Path) -> None:
    log = watch_status(repo, tmp_path)
    for slug in ("calm", "edited"):
        await engine.create(slug, "task")
    settle(tmp_path)
    assert await dirty(engine) == {"calm": False, "edited": False}
    assert (repo / ".aidp" / CACHE_FILE).exists()
    before = lines(log)
    assert await dirty(engine) == {"calm": False, "edited": False}
    assert asked(log, before) == []  # nothing changed: no git at all

    readme = repo / ".worktrees" / "edited" / "README.md"
    readme.write_text(readme.read_text().upper())  # in place, same size
    before = lines(log)
    assert await dirty(engine) == {"calm": False, "edited": True}
    assert asked(log, before) == ["edited"]

    git(readme.parent, "commit", "-q", "-am", "shout")
    assert await dirty(engine) == {"calm": False, "edited": False}


async def test_new_files_and_exclude_rules_show_in_the_next_list(engine: Engine, repo: Path, tmp_path: Path) -> None:
    await engine.create("untracked", "task")
    settle(tmp_path)
    assert await dirty(engine) == {"untracked": False}
    (repo / ".worktrees" / "untracked" / "deep" / "er").mkdir(parents=True)
    (repo / ".worktrees" / "untracked" / "deep" / "er" / "new.txt").write_text("x\n")
    assert await dirty(engine) == {"untracked": True}
    settle(tmp_path)
    assert await dirty(engine) == {"untracked": True}  # reused, still true
    with (repo / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("deep/\n")
    assert await dirty(engine) == {"untracked": False}
    (repo / ".worktrees" / "untracked" / "deep" / "er" / "new.txt").unlink()
    (repo / ".worktrees" / "untracked" / "README.md").unlink()
    assert await dirty(engine) == {"untracked": True}


async def test_a_worktree_too_big_to_walk_is_always_asked(engine: Engine, repo: Path, tmp_path: Path) -> None:
    log = watch_status(repo, tmp_path)
    await engine.create("big", "task")
    folder = repo / ".worktrees" / "big" / "many"
    folder.mkdir()
    for n in range(WALK_MAX + 1):
        (folder / f"{n}.txt").touch()
    settle(tmp_path)
    for _ in range(3):
        before = lines(log)
        assert await dirty(engine) == {"big": True}
        assert asked(log, before) == ["big"]


async def test_a_broken_cache_file_is_ignored_and_replaced(engine: Engine, repo: Path) -> None:
    await engine.create("fine", "task")
    (repo / ".aidp" / CACHE_FILE).write_text("{not json")
    assert await dirty(engine) == {"fine": False}
    (repo / ".worktrees" / "fine" / "README.md").write_text("changed\n")
    assert await dirty(engine) == {"fine": True}
    assert b"fine" in (repo / ".aidp" / CACHE_FILE).read_bytes()


async def test_a_removed_workstream_is_forgotten(engine: Engine, repo: Path) -> None:
    for slug in ("kept", "gone"):
        await engine.create(slug, "task")
    await dirty(engine)
    await engine.remove("gone")
    await dirty(engine)
    kept = (repo / ".aidp" / CACHE_FILE).read_text()
    assert "kept" in kept and "gone" not in kept


async def test_the_paths_kept_with_an_answer_still_see_every_change(engine: Engine, repo: Path, tmp_path: Path) -> None:
    """The first list that reuses an answer keeps the paths it found (`dirty.json`); later lists
    stamp those instead of walking. A file added deep in a kept folder, one removed, one renamed,
    and a folder made where none was listed all show, each in the next list."""
    log = watch_status(repo, tmp_path)
    await engine.create("deep", "task")
    worktree = repo / ".worktrees" / "deep"
    (worktree / "a" / "b").mkdir(parents=True)
    (worktree / "a" / "b" / "kept.txt").write_text("kept\n")
    git(worktree, "add", "-A")
    git(worktree, "commit", "-qm", "a folder")

    def changes() -> list[tuple[str, ...] | None]:
        return [answer[6] for answer in json.loads((repo / ".aidp" / CACHE_FILE).read_text()).values()]

    async def shows(dirty_now: bool) -> None:
        """Shown as `dirty_now`, then, once reused, with its paths kept and git not asked."""
        assert await dirty(engine) == {"deep": dirty_now}
        settle(tmp_path)
        assert await dirty(engine) == {"deep": dirty_now}
        before = lines(log)
        assert await dirty(engine) == {"deep": dirty_now}
        assert asked(log, before) == [] and changes() != [None]

    await shows(False)
    assert sorted(changes()[0] or ()) == [".git", "README.md", "a", "a/b", "a/b/kept.txt"]
    (worktree / "a" / "b" / "new.txt").write_text("new\n")
    await shows(True)
    (worktree / "a" / "b" / "new.txt").unlink()
    await shows(False)
    (worktree / "a" / "b" / "kept.txt").rename(worktree / "a" / "b" / "moved.txt")
    await shows(True)
    (worktree / "a" / "b" / "moved.txt").rename(worktree / "a" / "b" / "kept.txt")
    await shows(False)
    (worktree / "fresh").mkdir()
    (worktree / "fresh" / "x.txt").write_text("x\n")
    assert await dirty(engine) == {"deep": True}


async def test_answers_kept_by_an_earlier_aidp_are_reused(engine: Engine, repo: Path, tmp_path: Path) -> None:
    """`dirty.json` written before answers kept their paths (six fields each) is read, and its
    answers reused, without asking git again: an upgrade costs no git process per worktree."""
    log = watch_status(repo, tmp_path)
    await engine.create("old", "task")
    settle(tmp_path)
    assert await dirty(engine) == {"old": False}
    path = repo / ".aidp" / CACHE_FILE
    path.write_text(json.dumps({k: v[:6] for k, v in json.loads(path.read_text()).items()}))
    before = lines(log)
    assert await dirty(engine) == {"old": False}
    assert asked(log, before) == []
    assert all(len(answer) == 7 and answer[6] for answer in json.loads(path.read_text()).values())
