"""The `host` of a run: the machine its harness runs on when that is not this one (`[executor]
kind = "ray"`). Recorded with the run (`runs.host`, migration 9), kept with its result, and shown on
every face: `ws status`, `ws list`, the plain status lines, `--json` and JSON-RPC. A local run has none,
and says nothing of it. Here the host is recorded as a backend's start records it; the same faces
through a real Ray cluster are in test_ray.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from server_helpers import initialize_params, lsp_session, server_command
from support import cli

from aidp.cli.render import status_line
from aidp.engine import procs
from aidp.engine.events import StatusChanged
from aidp.engine.model import Status, WorkstreamResult, utc_now
from aidp.engine.store import MIGRATIONS, Store

NODE = "10.0.0.7"


def state(repo: Path) -> Path:
    return repo / ".aidp" / "state.db"


def start_remote(repo: Path, slug: str, run_id: str) -> None:
    """What the executor records when a backend started `slug`'s harness on NODE: the claim (held
    by this test's process, alive, so no viewer takes it for a dead run) and the start."""
    store = Store(state(repo))
    try:
        store.claim([slug], run_id, procs.self_identity(), {slug: None})
        store.mark_running(run_id, slug, (4242, None, None), str(repo / "x.log"), utc_now(), host=NODE)
    finally:
        store.close()


def finish(repo: Path, slug: str, run_id: str) -> None:
    """The result as the executor records it; a result that does not repeat the host keeps it."""
    store = Store(state(repo))
    try:
        store.finish(run_id, WorkstreamResult(slug=slug, status=Status.COMPLETED, exit_code=0, finished_at=utc_now()))
    finally:
        store.close()


def test_a_remote_run_shows_its_host_in_status_and_list_and_keeps_it_with_its_result(repo: Path) -> None:
    assert cli(repo, "ws", "new", "far", "runs on a cluster").returncode == 0
    assert cli(repo, "ws", "new", "near", "runs here").returncode == 0
    start_remote(repo, "far", "run-1")

    status = cli(repo, "ws", "status", "far")
    assert status.returncode == 0, status.stderr
    assert f"  host: {NODE}\n" in status.stdout
    assert f"pid 4242 on {NODE}" in status.stdout  # the recent events say where it started
    listed = cli(repo, "ws", "list")
    rows = listed.stdout.splitlines()
    far = next(i for i, row in enumerate(rows) if row.startswith("far "))
    assert rows[far + 1] == f"  ↳ on {NODE}"
    assert "host:" not in cli(repo, "ws", "status", "near").stdout  # a workstream that ran nowhere says nothing
    (far_json,) = [w for w in json.loads(cli(repo, "ws", "list", "--json").stdout) if w["slug"] == "far"]
    assert far_json["currentRun"]["host"] == NODE

    finish(repo, "far", "run-1")
    status = cli(repo, "ws", "status", "far")
    assert "last run:   completed" in status.stdout
    assert f"  host: {NODE}\n" in status.stdout
    (far_json,) = [w for w in json.loads(cli(repo, "ws", "list", "--json").stdout) if w["slug"] == "far"]
    assert far_json["currentRun"] is None and far_json["lastResult"]["host"] == NODE
    assert "↳" not in cli(repo, "ws", "list").stdout


def test_a_local_run_has_no_host(repo: Path) -> None:
    assert cli(repo, "ws", "new", "here", "runs here", "--command", "true").returncode == 0
    ran = json.loads(cli(repo, "ws", "run", "here", "--json").stdout)
    assert ran["results"][0]["host"] is None
    status = cli(repo, "ws", "status", "here")
    assert "last run:   completed" in status.stdout and "host:" not in status.stdout


async def test_json_rpc_lists_the_host_of_a_running_and_of_a_finished_run(repo: Path, tmp_path: Path) -> None:
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        await client.call("aidp/wsNew", {"slug": "far", "task": "runs on a cluster"})
        start_remote(repo, "far", "run-1")
        (listed,) = (await client.call("aidp/wsList", {}))["workstreams"]
        assert listed["status"] == "running" and listed["currentRun"]["host"] == NODE
        finish(repo, "far", "run-1")
        (listed,) = (await client.call("aidp/wsList", {}))["workstreams"]
        assert listed["status"] == "completed" and listed["lastResult"]["host"] == NODE


def test_a_database_from_before_hosts_is_upgraded_with_its_runs(repo: Path) -> None:
    """Migration 9 adds `runs.host`: a run recorded before it has none, and the upgraded database
    records the next one's."""
    before = next(i for i, script in enumerate(MIGRATIONS) if "COLUMN host" in script)
    assert cli(repo, "ws", "new", "old", "ran before", "--command", "true").returncode == 0
    assert cli(repo, "ws", "run", "old").returncode == 0
    with sqlite3.connect(state(repo)) as db:  # back to how the aidp before hosts left it
        db.execute("ALTER TABLE runs DROP COLUMN host")
        db.execute(f"PRAGMA user_version = {before}")
    listed = json.loads(cli(repo, "ws", "list", "--json").stdout)
    assert listed[0]["lastResult"]["status"] == "completed" and listed[0]["lastResult"]["host"] is None
    start_remote(repo, "old", "run-2")
    with sqlite3.connect(state(repo)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT run_id, host FROM runs ORDER BY run_id").fetchall()[-1] == ("run-2", NODE)


def test_status_lines_say_the_host_of_a_remote_run_only() -> None:
    remote = StatusChanged(run_id="r", slug="far", status=Status.RUNNING, host=NODE)
    local = StatusChanged(run_id="r", slug="near", status=Status.RUNNING)
    assert status_line(remote).endswith(f"far running on {NODE}")
    assert status_line(local).endswith("near running")
