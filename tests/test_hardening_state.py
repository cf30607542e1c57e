"""The state database and what aidp writes (issue 8, items 9, 10, 17 and the last of 18), end to
end through the CLI and the JSON-RPC server: real repositories, real SQLite files, real processes.

- A slug removed and created again shows none of its predecessor's events or log.
- A state database that is missing, emptied, damaged, or deleted/replaced/truncated under a
  running server is refused with a message that says how to recover; aidp never starts an empty
  one silently over its own worktrees.
- A task that no run could pass to its harness is refused when it is created.
- Commands that only read write nothing in a repository aidp never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import harness, new_ws, workstreams
from conftest import toml_list, write_config
from server_helpers import WS_LIST_CHANGED, initialize_params, lsp_session, raw_session, server_command
from support import cli, wait_until

from aidp.engine.model import TASK_ENV_MAX_BYTES, TASK_MAX_BYTES
from aidp.engine.store import MIGRATIONS, SCHEMA

pytestmark = pytest.mark.timeout(150)


def state_db(repo: Path) -> Path:
    return repo / ".aidp" / "state.db"


def say(tmp_path: Path, word: str) -> str:
    """A --command that prints `word`."""
    return harness(tmp_path, f"say-{word}", f"print({word!r})\n")


# -- 9. a re-created slug is a new workstream ----------------------------------------------------


def test_recreated_slug_shows_none_of_its_predecessors_events_or_log(repo: Path, tmp_path: Path) -> None:
    new_ws(repo, "x", say(tmp_path, "first"), task="the first x")
    assert cli(repo, "ws", "run", "x").returncode == 0
    assert "first" in cli(repo, "ws", "logs", "x").stdout
    assert cli(repo, "ws", "rm", "x").returncode == 0
    new_ws(repo, "x", say(tmp_path, "second"), task="the second x")

    logs = cli(repo, "ws", "logs", "x")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == ""
    assert "x has not run yet" in logs.stderr
    status = cli(repo, "ws", "status", "x")
    events = status.stdout.split("recent events:\n")[1].split("git status --short:")[0].splitlines()
    assert len(events) == 1 and events[0].rstrip().endswith("created"), status.stdout

    assert cli(repo, "ws", "run", "x").returncode == 0
    logs = cli(repo, "ws", "logs", "x")
    assert logs.stdout == "second\n"


async def test_recreated_slug_has_no_log_over_json_rpc(repo: Path, tmp_path: Path) -> None:
    write_config(repo, f"[harness]\ncommand = {toml_list(['sh', '-c', 'echo first'])}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        await client.call("aidp/wsNew", {"slug": "x", "task": "the first x"})
        await client.call("aidp/wsRun", {"slugs": ["x"]})
        first = await client.call("aidp/wsLog", {"slug": "x"})
        assert first["text"] == "first\n"
        await client.call("aidp/wsRemove", {"slug": "x"})
        await client.call("aidp/wsNew", {"slug": "x", "task": "the second x"})
        assert await client.call("aidp/wsLog", {"slug": "x"}) == {"slug": "x", "logPath": None, "text": ""}


def test_an_older_database_is_upgraded_in_place_and_keeps_histories_apart(repo: Path, tmp_path: Path) -> None:
    """A database as the aidp before workstream ids made it: x ran, was removed, and was created
    again. After the upgrade the new x has only its own creation, and no log."""
    before_ids = next(i for i, script in enumerate(MIGRATIONS) if "ws_id" in script)
    old_log = tmp_path / "old.log"
    old_log.write_text("the old x's output\n")
    path = state_db(repo)
    path.parent.mkdir()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    for script in MIGRATIONS[:before_ids]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version = {before_ids}")
    worktree = repo / ".worktrees" / "x"
    events = [
        ("2026-01-01T00:00:00.000Z", None, "active", "created"),
        ("2026-01-01T00:00:01.000Z", "run-1", "queued", None),
        ("2026-01-01T00:00:02.000Z", "run-1", "completed", None),
        ("2026-01-01T00:00:03.000Z", None, "active", "removed"),
        ("2026-01-02T00:00:00.000Z", None, "active", "created"),
    ]
    db.executemany(
        "INSERT INTO events (slug, run_id, status, message, at) VALUES ('x', ?, ?, ?, ?)",
        [(run_id, status, message, at) for at, run_id, status, message in events],
    )
    db.execute(
        "INSERT INTO runs (run_id, slug, status, exit_code, started_at, log_path) "
        "VALUES ('run-1', 'x', 'completed', 0, '2026-01-01T00:00:01.500Z', ?)",
        (str(old_log),),
    )
    db.execute(
        "INSERT INTO workstreams (slug, task, status, branch, path, created_at, updated_at) VALUES "
        "('x', 'the second x', 'active', 'aidp/x', ?, '2026-01-02T00:00:00.000Z', '2026-01-02T00:00:00.000Z')",
        (str(worktree),),
    )
    db.close()

    logs = cli(repo, "ws", "logs", "x")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "" and "x has not run yet" in logs.stderr
    status = cli(repo, "ws", "status", "x")
    assert status.returncode == 0, status.stderr
    assert "2026-01-02T00:00:00.000Z  active     -  created" in status.stdout
    assert "2026-01-01" not in status.stdout
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == len(events)  # nothing was dropped
    db.close()


# -- 10. a lost, damaged or replaced state database ------------------------------------------------


def test_missing_or_emptied_database_with_worktrees_is_refused_not_started_over(repo: Path, tmp_path: Path) -> None:
    for slug in ("alpha", "bravo"):
        new_ws(repo, slug, say(tmp_path, slug))
    path = state_db(repo)
    for emptied in (False, True):
        path.unlink(missing_ok=True)
        if emptied:
            path.touch()
        for args in (("ws", "list"), ("ws", "run-all"), ("ws", "status", "alpha")):
            result = cli(repo, *args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert "missing or empty" in result.stderr and "alpha, bravo" in result.stderr
            assert "aidp ws new <slug> <task>" in result.stderr and "Traceback" not in result.stderr
            assert path.exists() == emptied and (not emptied or path.stat().st_size == 0)  # not started over

    # `ws new` is the way out: it starts a new database, and says what it does not hold.
    created = cli(repo, "ws", "new", "charlie", "a new one", "--command", say(tmp_path, "charlie"))
    assert created.returncode == 0, created.stderr
    assert "starting a new one" in created.stderr and "alpha, bravo" in created.stderr
    assert list(workstreams(repo)) == ["charlie"]


async def test_server_started_on_a_lost_database_refuses_and_starts_nothing(repo: Path, tmp_path: Path) -> None:
    new_ws(repo, "alpha", say(tmp_path, "alpha"))
    state_db(repo).unlink()
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        for method, params in (("aidp/wsList", {}), ("aidp/wsNew", {"slug": "bravo", "task": "another"})):
            error = await client.fails(method, params)
            assert error.code == -32803
            assert "missing or empty" in error.message and "alpha" in error.message, error.message
    assert not state_db(repo).exists()
    assert not (repo / ".worktrees" / "bravo").exists()


@pytest.mark.parametrize("damage", ["garbage", "broken page"])
def test_damaged_database_is_refused_and_left_as_it_is(repo: Path, tmp_path: Path, damage: str) -> None:
    for slug in ("alpha", "bravo", "charlie"):
        new_ws(repo, slug, say(tmp_path, slug), task="a task " * 200)
    path = state_db(repo)
    with path.open("r+b") as f:
        if damage == "garbage":
            f.write(b"this is not a database at all " * 10)
        else:  # the first bytes stay right, a page of the tables does not
            f.seek(os.path.getsize(path) - 4096)
            f.write(b"\xff" * 4096)
    damaged = path.read_bytes()
    for args in (("ws", "list"), ("ws", "new", "delta", "task"), ("ws", "run-all")):
        result = cli(repo, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"the state database {path} is damaged" in result.stderr, result.stderr
        assert "Move it aside" in result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == damaged
    assert not (repo / ".worktrees" / "delta").exists()


def _delete(path: Path) -> None:
    path.unlink()


def _replace(path: Path) -> None:
    """A copy in place of the original: a valid database, but another file."""
    copy = path.with_name("copy.db")
    shutil.copyfile(path, copy)
    os.replace(copy, path)


def _truncate(path: Path) -> None:
    os.truncate(path, 0)


@pytest.mark.parametrize(
    ("change", "said"),
    [(_delete, "was deleted while"), (_replace, "was replaced by another file while"), (_truncate, "is damaged")],
    ids=["deleted", "replaced", "truncated"],
)
async def test_server_refuses_a_database_changed_under_it(
    repo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], change: Callable[[Path], None], said: str
) -> None:
    write_config(repo, f"[harness]\ncommand = {toml_list(['sh', '-c', 'echo hi'])}\n")
    path = state_db(repo)
    async with raw_session(server_command(repo), tmp_path) as server:
        await server.initialize()
        await server.result("aidp/wsNew", {"slug": "alpha", "task": "a task"})
        await server.result("aidp/wsRun", {"slugs": ["alpha"]})
        noticed = len(server.of(WS_LIST_CHANGED))
        change(path)
        # The server notices by itself and tells the client to re-fetch ...
        await wait_until(lambda: len(server.of(WS_LIST_CHANGED)) > noticed, what="wsListChanged")
        # ... and every request is refused, saying what happened.
        for method, params in (
            ("aidp/wsList", {}),
            ("aidp/wsNew", {"slug": "bravo", "task": "another"}),
            ("aidp/wsLog", {"slug": "alpha"}),
            ("aidp/wsCancel", {"slugs": ["alpha"]}),
        ):
            error = (await server.request(method, params))["error"]
            assert error["code"] == -32803, (method, error)
            assert f"the state database {path} {said}" in error["message"], error
        # A CLI beside it does not start over either (nor damage what the server has open).
        beside = cli(repo, "ws", "list")
        assert beside.returncode == (0 if change is _replace else 1), beside.stderr
        assert "Traceback" not in beside.stderr
        assert await server.close() == 0
    assert "Traceback" not in capfd.readouterr().err
    assert not (repo / ".worktrees" / "bravo").exists()

    # The server is gone. A deleted database is refused, never started over empty. What a
    # truncated one is now depends on what the server's write-ahead log put back when it closed:
    # refused, or whole again; never empty.
    after = cli(repo, "ws", "list")
    assert "Traceback" not in after.stderr
    if change is _delete:
        assert after.returncode == 1 and "alpha" in after.stderr and "aidp ws new" in after.stderr, after.stderr
        assert not path.exists()
    elif after.returncode == 1:
        assert change is _truncate and "aidp ws new" in after.stderr, after.stderr
    else:
        assert after.returncode == 0 and "alpha" in after.stdout, after.stderr


# -- 17. a task no run could pass ---------------------------------------------------------------


def test_task_too_long_is_refused_at_creation(repo: Path, tmp_path: Path) -> None:
    # Through a file: one argument of the CLI itself cannot be this long.
    too_long = tmp_path / "too-long.md"
    too_long.write_text("a" * (TASK_MAX_BYTES + 1))
    refused = cli(repo, "ws", "new", "big", "--task-file", str(too_long))
    assert refused.returncode == 2, refused.stderr
    assert f"the task is {TASK_MAX_BYTES + 1} bytes; the limit is {TASK_MAX_BYTES} bytes" in refused.stderr
    assert not (repo / ".worktrees" / "big").exists() and "big" not in workstreams(repo)

    # The longest task accepted reaches the harness whole, in its task file; AIDP_TASK only while
    # the kernel takes it as one environment string.
    count = harness(
        tmp_path,
        "count",
        "import os\nwhole = open(os.environ['AIDP_TASK_FILE'], 'rb').read()\n"
        "print(len(whole), len(os.environ.get('AIDP_TASK', '')))\n",
    )
    longest = tmp_path / "longest.md"
    for slug, size in (("biggest", TASK_MAX_BYTES), ("env", TASK_ENV_MAX_BYTES), ("file", TASK_ENV_MAX_BYTES + 1)):
        longest.write_text("t" * size)
        created = cli(repo, "ws", "new", slug, "--task-file", str(longest), "--command", count)
        assert created.returncode == 0, created.stderr
        run = cli(repo, "ws", "run", slug)
        assert run.returncode == 0, run.stdout + run.stderr
        in_env = size if size <= TASK_ENV_MAX_BYTES else 0
        assert cli(repo, "ws", "logs", slug).stdout == f"{size} {in_env}\n"


async def test_task_too_long_is_refused_over_json_rpc(repo: Path, tmp_path: Path) -> None:
    task = "é" * (TASK_MAX_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        error = await client.fails("aidp/wsNew", {"slug": "big", "task": task})
        assert error.code == -32602
        assert f"the limit is {TASK_MAX_BYTES} bytes" in error.message
        assert await client.workstreams() == {}
    assert not (repo / ".worktrees" / "big").exists()


# -- 18. reading writes nothing where aidp never ran ------------------------------------------------


def test_read_only_commands_write_nothing_in_a_fresh_repository(repo: Path) -> None:
    exclude = repo / ".git" / "info" / "exclude"
    before = exclude.read_bytes()
    listed = cli(repo, "ws", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    assert cli(repo, "ws", "list").returncode == 0
    assert cli(repo, "ws", "run-all").returncode == 0
    for args in (("ws", "status", "x"), ("ws", "logs", "x"), ("ws", "cancel", "x"), ("ws", "run", "x")):
        result = cli(repo, *args)
        assert result.returncode == 2 and "unknown workstream: x" in result.stderr, (args, result.stderr)
    assert not (repo / ".aidp").exists()
    assert exclude.read_bytes() == before

    assert cli(repo, "ws", "new", "x", "a task", "--command", "true").returncode == 0
    assert state_db(repo).exists()
    assert {"/.aidp/", "/.worktrees/"} <= set(exclude.read_text().splitlines())
