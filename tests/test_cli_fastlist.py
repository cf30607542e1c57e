"""`aidp ws list` prints the table the last list kept while nothing that list read has changed
(`aidp.cli.fastlist`, `aidp.engine.listing`; issue 13: within 1.5x `python -c pass`). Whether the
kept table was printed is read from a fact, not a time: `python -X importtime` shows neither asyncio
nor sqlite3 imported when it was. Every change a list shows is made after the kept table was shown,
so each test proves that change stops it; what is printed then is the full list's."""

from __future__ import annotations

import marshal
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cli_helpers import Terminal, gated, harness, spawn_cli
from support import PYTHON, WAIT_S, child_env, cli, git, make_repo, wait_until_sync
from test_dirty_cache import settle

from aidp.cli import fastlist
from aidp.engine import config, engine, gitrepo, listing

FULL_ONLY = re.compile(r"\|\s+(asyncio|sqlite3)$", re.MULTILINE)  # imported by the full list alone
WIDE_TASK = "修正 the 日本語 rendering of wide characters, long enough to be cut at every width tried"
CONTROL_TASK = "a task with \x1b[31mred\x1b[0m and a \x07 bell in it, long enough to be cut as well"


class Lister:
    """`aidp ws list` in one repository, with a HOME of its own (the user's git config is an input
    of a list: another test's change to the real one must not change this one's)."""

    def __init__(self, repo: Path, home: Path) -> None:
        home.mkdir(exist_ok=True)
        self.repo = repo
        self.env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[str, bool]:
        """(what `aidp [args] ws list` printed, whether it was the kept table)."""
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-m", "aidp", *args, "ws", "list"],
            cwd=cwd or self.repo,
            env={**child_env(), **self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert done.returncode == 0 and said == [], done.stderr
        return done.stdout, not FULL_ONLY.search(done.stderr)

    def cli(self, *args: str) -> str:
        done = cli(self.repo, *args, env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def quiet(self, tmp_path: Path) -> str:
        """The table once nothing changed for the racy window: a full list keeps it and the next
        list prints the kept one, the same."""
        settle(tmp_path)
        first, _ = self.run()
        again, kept = self.run()
        assert kept and again == first
        return again

    def changed(self) -> str:
        """The next list, which must be a full one (the change stopped the kept table)."""
        out, kept = self.run()
        assert not kept, out
        return out


def row(table: str, slug: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"{slug} "))


@pytest.fixture
def lister(tmp_path: Path) -> Lister:
    repo = make_repo(tmp_path)
    lister = Lister(repo, tmp_path / "home")
    for slug in ("a", "b"):
        lister.cli("ws", "new", slug, f"task {slug}", "--command", "true")
    return lister


def test_each_change_shows_in_the_next_list(lister: Lister, tmp_path: Path) -> None:
    repo, worktrees = lister.repo, lister.repo / ".worktrees"
    assert "0 commits" in row(lister.quiet(tmp_path), "a")

    (worktrees / "a" / "new.txt").write_text("new\n")  # a commit in a worktree
    git(worktrees / "a", "add", "new.txt")
    git(worktrees / "a", "commit", "-q", "-m", "new")
    assert "1 commit " in row(lister.changed(), "a")

    lister.quiet(tmp_path)
    with open(worktrees / "b" / "README.md", "a") as f:  # an edit in place: only the file's own times change
        f.write("more\n")
    assert "uncommitted" in row(lister.changed(), "b")

    lister.quiet(tmp_path)
    (repo / "base.txt").write_text("base\n")  # the base branch moves
    git(repo, "add", "base.txt")
    git(repo, "commit", "-q", "-m", "base")
    assert "1 behind" in row(lister.changed(), "a")

    lister.quiet(tmp_path)
    lister.cli("ws", "set", "a", "--priority", "high")
    assert "high" in row(lister.changed(), "a")

    lister.quiet(tmp_path)
    lister.cli("ws", "run", "b")
    assert "exit 0" in row(lister.changed(), "b")

    before = lister.quiet(tmp_path)
    (repo / ".aidp" / "config.toml").write_text("[scheduler]\nhistory_runs = 3\n")
    assert lister.changed() == before  # nothing in it shows, but a list reads it

    lister.quiet(tmp_path)
    git(repo, "worktree", "add", "-q", "-b", "aidp/stray", str(worktrees / "stray"))  # a leftover folder
    assert "! stray: worktree" in lister.changed()
    assert not (repo / ".aidp" / fastlist.CACHE_FILE).exists()  # '!' lines are never kept
    git(repo, "worktree", "remove", str(worktrees / "stray"))

    lister.quiet(tmp_path)
    shutil.rmtree(worktrees / "b")  # a worktree removed by hand
    assert "! b: worktree" in lister.changed()
    settle(tmp_path)
    assert "! b: worktree" in lister.changed()


def test_each_change_deep_in_a_worktree_shows_in_the_next_list(lister: Lister, tmp_path: Path) -> None:
    """The kept table stamps the paths a worktree held when it was kept instead of walking it
    again: whatever is added, removed, replaced or edited at any depth still shows."""
    mine = lister.repo / ".worktrees" / "a"
    deep = mine / "deep" / "er"
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("kept\n")
    git(mine, "add", "deep")
    git(mine, "commit", "-q", "-m", "deep")
    assert "1 commit " in row(lister.quiet(tmp_path), "a")

    with open(deep / "file.txt", "a") as f:  # in place: only the file's own ctime changes
        f.write("more\n")
    assert "uncommitted" in row(lister.changed(), "a")
    git(mine, "checkout", "-q", "--", ".")

    lister.quiet(tmp_path)
    (deep / "new.txt").write_text("new\n")  # a new file in a folder below the top
    assert "uncommitted" in row(lister.changed(), "a")
    (deep / "new.txt").unlink()

    lister.quiet(tmp_path)
    (deep / "saved.tmp").write_text("saved\n")  # an editor's save: a new file renamed over the old
    (deep / "saved.tmp").rename(deep / "file.txt")
    assert "uncommitted" in row(lister.changed(), "a")
    git(mine, "checkout", "-q", "--", ".")

    lister.quiet(tmp_path)
    (deep / "file.txt").unlink()
    assert "uncommitted" in row(lister.changed(), "a")
    git(mine, "checkout", "-q", "--", ".")

    before = lister.quiet(tmp_path)
    (deep / "empty").mkdir()  # git shows no empty folder, but the list must look again
    assert lister.changed() == before
    assert lister.quiet(tmp_path) == before


def test_a_full_list_takes_the_paths_listed_before_only_for_the_same_answer_of_git(
    lister: Lister, tmp_path: Path
) -> None:
    """A full list takes the paths listed in a worktree after git's answer for it (kept with the
    answer) while that answer is the same one, and lists them anew once git was asked again:
    either way a change made afterwards shows."""
    repo, mine = lister.repo, lister.repo / ".worktrees" / "a"
    lister.quiet(tmp_path)
    (mine / "fresh").mkdir()
    (mine / "fresh" / "file.txt").write_text("fresh\n")
    git(mine, "add", "fresh")
    git(mine, "commit", "-q", "-m", "fresh")
    settle(tmp_path)  # the new folder is older than git's next answer by more than the racy window
    assert "1 commit " in row(lister.changed(), "a")
    lister.quiet(tmp_path)
    with open(mine / "fresh" / "file.txt", "a") as f:  # in the folder the answer before never listed
        f.write("more\n")
    assert "uncommitted" in row(lister.changed(), "a")
    git(mine, "checkout", "-q", "--", ".")

    lister.quiet(tmp_path)
    (repo / ".aidp" / "config.toml").write_text("[scheduler]\nhistory_runs = 3\n")
    settle(tmp_path)
    lister.changed()  # git is asked nothing: every worktree's paths come from its answer
    lister.quiet(tmp_path)
    (mine / "fresh" / "new.txt").write_text("new\n")
    assert "uncommitted" in row(lister.changed(), "a")


def test_a_list_within_the_racy_window_keeps_no_table(lister: Lister, tmp_path: Path) -> None:
    """A list whose inputs are too recent to trust keeps nothing, and removes the table kept
    before (it no longer holds)."""
    path, config = lister.repo / ".aidp" / fastlist.CACHE_FILE, lister.repo / ".aidp" / "config.toml"
    lister.quiet(tmp_path)
    assert path.exists()
    config.write_text("[scheduler]\nhistory_runs = 3\n")
    written = config.stat().st_mtime_ns
    os.utime(config, ns=(written, written + 3600 * 10**9))  # stamped in the future: within the racy window
    lister.cli("ws", "set", "a", "--priority", "high")
    assert "high" in row(lister.changed(), "a")
    assert not path.exists()
    os.utime(config, ns=(written, written))
    settle(tmp_path)
    assert "high" in row(lister.changed(), "a")
    assert "high" in row(lister.quiet(tmp_path), "a")


def test_a_run_in_flight_is_never_the_kept_table(lister: Lister, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    lister.cli("ws", "new", "c", "task c", "--command", harness(tmp_path, "gated", gated(gate, "started", "done")))
    lister.quiet(tmp_path)
    run = spawn_cli(lister.repo, "ws", "run", "c", env=lister.env)
    wait_until_sync(lambda: "running" in row(lister.run()[0], "c"), what="c running")
    settle(tmp_path)  # nothing changes while the harness waits: only the status says it runs
    for _ in range(2):
        assert "running" in row(lister.changed(), "c")
    gate.touch()
    assert run.wait(timeout=WAIT_S) == 0
    assert "exit 0" in row(lister.changed(), "c")


def test_a_workstream_being_created_by_another_process_is_never_the_kept_table(lister: Lister, tmp_path: Path) -> None:
    """`ws new` holds the workstream while its setup command runs: were it to die, only the full
    list's recovery would correct what it left."""
    gate, script = tmp_path / "gate", tmp_path / "setup.py"
    script.write_text(gated(gate, "setting up", "set up"))
    (lister.repo / ".aidp" / "config.toml").write_text(f'[worktree]\nsetup = ["{PYTHON}", "{script}"]\n')
    creating = spawn_cli(lister.repo, "ws", "new", "c", "task c", "--command", "true", env=lister.env)
    wait_until_sync(lambda: "c " in lister.run()[0], what="c listed")
    settle(tmp_path)  # nothing changes while the setup command waits
    for _ in range(2):
        assert row(lister.changed(), "c")
    gate.touch()
    assert creating.wait(timeout=WAIT_S) == 0
    assert row(lister.quiet(tmp_path), "c")


def test_another_process_writing_while_the_database_is_held_open(lister: Lister, tmp_path: Path) -> None:
    """With the database open elsewhere (a server), a write stays in SQLite's log: the log's stamp
    is what changes."""
    state = lister.repo / ".aidp" / "state.db"
    held = sqlite3.connect(state)
    try:
        held.execute("SELECT count(*) FROM workstreams").fetchall()
        lister.quiet(tmp_path)
        lister.cli("ws", "set", "b", "--priority", "low")
        assert state.with_name("state.db-wal").stat().st_size > 0
        assert "low" in row(lister.changed(), "b")
        assert "low" in row(lister.quiet(tmp_path), "b")
    finally:
        held.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"\x00garbage" * 10,
        lambda data: marshal.dumps(("aidp ws list table", 999)),  # another format
        lambda data: marshal.dumps((*marshal.loads(data)[:4], ((1,),) * 9, ("",))),  # cells of the wrong type
    ],
)
def test_a_damaged_kept_table_is_ignored_and_rewritten(lister: Lister, tmp_path: Path, damage: object) -> None:
    table = lister.quiet(tmp_path)
    path = lister.repo / ".aidp" / fastlist.CACHE_FILE
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert lister.changed() == table
    assert lister.quiet(tmp_path) == table


def test_kept_and_full_tables_are_the_same_bytes(lister: Lister, tmp_path: Path) -> None:
    """Across widths, NO_COLOR and --no-color, with wide (CJK) and control characters in tasks."""
    lister.cli("ws", "new", "wide", WIDE_TASK, "--command", "true")
    lister.cli("ws", "new", "ctl", CONTROL_TASK, "--command", "true")
    path = lister.repo / ".aidp" / fastlist.CACHE_FILE
    lister.quiet(tmp_path)
    variants: list[tuple[dict[str, str], tuple[str, ...]]] = [({"COLUMNS": str(w)}, ()) for w in (20, 60, 80, 120, 250)]
    variants += [({"NO_COLOR": "1", "COLUMNS": "70"}, ()), ({"COLUMNS": "90"}, ("--no-color",))]
    for env, args in variants:
        path.unlink()
        full, kept = lister.run(*args, env=env)
        assert not kept
        again, kept = lister.run(*args, env=env)
        assert kept and again == full, env


def on_a_terminal(lister: Lister) -> tuple[str, bool]:
    """`aidp ws list` on a terminal (colour on): (its table, whether it was the kept one)."""
    term = Terminal(lister.repo, "ws", "list", columns=120, env={**lister.env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert term.close() == 0
    lines = term.raw.decode().replace("\r\n", "\n").splitlines()
    table = [line for line in lines if not line.startswith("import time:")]
    return "\n".join(table), not FULL_ONLY.search("\n".join(lines))


def test_conflicts_are_marked_in_colour_only_where_colour_is_on(lister: Lister, tmp_path: Path) -> None:
    """The one cell that depends on colour: a table kept without it is not printed with it, nor
    the other way round."""
    repo, mine = lister.repo, lister.repo / ".worktrees" / "a"
    for where, text in ((mine, "from a\n"), (repo, "from main\n")):
        (where / "README.md").write_text(text)
        git(where, "commit", "-q", "-am", text)
    piped = lister.quiet(tmp_path)
    assert "conflicts" in row(piped, "a") and "⚠" not in piped
    shown, kept = on_a_terminal(lister)
    assert not kept and "⚠ conflicts" in row(shown, "a")
    assert on_a_terminal(lister) == (shown, True)
    assert lister.run() == (piped, False)


def test_two_lists_racing_leave_one_whole_table(lister: Lister, tmp_path: Path) -> None:
    table = lister.quiet(tmp_path)
    (lister.repo / ".aidp" / fastlist.CACHE_FILE).unlink()
    racing = [spawn_cli(lister.repo, "ws", "list", env=lister.env) for _ in range(3)]
    assert [proc.communicate(timeout=WAIT_S)[0] for proc in racing] == [table] * 3
    assert lister.run() == (table, True)


def test_where_the_kept_table_is_used(lister: Lister, tmp_path: Path) -> None:
    """From a folder inside the repository: yes; from a workstream's own checkout (`.git` a file):
    the full list, the same table; with another git environment: the full list."""
    table = lister.quiet(tmp_path)
    (lister.repo / "sub").mkdir()
    settle(tmp_path)
    assert lister.run(cwd=lister.repo / "sub") == (table, True)
    assert lister.run(cwd=lister.repo / ".worktrees" / "a") == (table, False)
    assert lister.run(env={"GIT_CONFIG_GLOBAL": str(tmp_path / "other")}) == (table, False)


def test_a_repository_aidp_never_used_gets_nothing_written(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    out, kept = Lister(repo, tmp_path / "home").run()
    assert not kept and "no workstreams yet" in out
    assert not (repo / ".aidp").exists()


def test_the_fast_path_names_the_engines_files() -> None:
    """`listing` and `fastlist` name files the engine defines, without importing the engine."""
    assert (listing.STATE_DB, listing.CONFIG_NAME) == (engine.STATE_DB, config.CONFIG_NAME)
    assert fastlist.STATE_DIR == gitrepo.STATE_DIR
