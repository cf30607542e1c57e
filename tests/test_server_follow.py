"""A run started from a terminal (`aidp ws run` in another process) seen through `aidp serve`: its
output arrives as `aidp/wsOutput` while it runs, and its start time is on the wire, so a client
that noticed it late counts the elapsed time from when it really started. The server, the CLI and
the harness are real processes; the client speaks JSON-RPC over the server's real stdio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config
from server_helpers import WS_OUTPUT, AidpClient, initialize_params, lsp_session, server_command
from support import wait_until

pytestmark = pytest.mark.timeout(150)


def gated(gate: Path) -> list[str]:
    """Says it started, waits until the test creates `gate`, says it was released."""
    return ["sh", "-c", f'echo started; while [ ! -e "{gate}" ]; do sleep 0.05; done; echo released']


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(['true'])}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        yield session


def output(client: AidpClient, slug: str) -> list[dict[str, Any]]:
    return [n for n in client.of(WS_OUTPUT) if n["slug"] == slug]


async def test_a_terminals_run_reaches_the_client_live_with_its_start_time(
    client: AidpClient, repo: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "term", "task": "from a terminal", "command": gated(gate)})
    cli = driver(repo, "term", cli=True)

    # Live: the first line arrives while the harness still waits for the gate.
    await wait_until(lambda: "started" in "".join(n["text"] for n in output(client, "term")), what="live output")
    in_flight = (await client.workstreams())["term"]
    assert in_flight["status"] == "running"
    current = in_flight["currentRun"]
    assert current is not None and current["startedAt"] is not None

    gate.touch()
    stdout, stderr = await asyncio.to_thread(cli.communicate, timeout=60)
    assert cli.returncode == 0, stderr
    result = json.loads(stdout)["results"][0]
    # The client was told the run's own start, not when it noticed the run.
    assert (current["runId"], current["startedAt"]) == (json.loads(stdout)["runId"], result["startedAt"])

    # Every byte of the log, once, in order, under the run's id: nothing lost after the run ended.
    log = Path(result["logPath"]).read_text()
    assert log == "started\nreleased\n"
    await wait_until(lambda: "".join(n["text"] for n in output(client, "term")) == log, what="the whole log")
    assert {n["runId"] for n in output(client, "term")} == {current["runId"]}
    assert (await client.workstreams())["term"]["currentRun"] is None


async def test_the_servers_own_run_says_when_it_started(client: AidpClient, markers: Path) -> None:
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "own", "task": "here", "command": gated(gate)})
    run = client.start_call("aidp/wsRun", {"slugs": ["own"]})
    await wait_until(lambda: any(n["status"] == "running" for n in client.statuses("own")), what="running")
    running = next(n for n in client.statuses("own") if n["status"] == "running")
    listed = (await client.workstreams())["own"]["currentRun"]
    gate.touch()
    result = (await run)["results"][0]

    assert running["startedAt"] == listed["startedAt"] == result["startedAt"]
    assert listed["runId"] == running["runId"]
    assert [n["startedAt"] for n in client.statuses("own") if n["status"] != "running"] == [None, None]
    # Its output is sent once: the follower leaves this server's own runs to the run itself.
    assert "".join(n["text"] for n in output(client, "own")) == "started\nreleased\n"
