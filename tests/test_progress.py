"""Live progress per workstream, end to end: a harness appends JSON lines to `$AIDP_PROGRESS` and
the latest report reaches the CLI's plain view, `ws list --json` and `ws status` (from another
process, through the claim), `aidp/wsStatus` and the run's `$/progress` percentage, and a server
following a terminal's run. Steps-only reports get step-wise percentages from `--steps`, malformed
lines are ignored and counted, and a fake `claude` printing recorded stream-json events gets its tool
use turned into messages. Harnesses are real processes that wait for gate files the test creates:
every assertion is about what was seen before a gate opened, never about time."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Lines, new_ws, spawn_cli, workstreams
from conftest import toml_list, write_config, write_script
from lsprotocol import types as lsp
from server_helpers import AidpClient, initialize_params, lsp_session, server_command
from support import PYTHON, cli, wait_until, wait_until_sync

from aidp.engine.model import Progress
from aidp.engine.progress import LINE_MAX, MESSAGE_MAX, ProgressState, StreamJson, parse_report
from aidp.engine.progress import Lines as ByteLines

pytestmark = pytest.mark.timeout(180)

# Appends each stage's lines to $AIDP_PROGRESS, then waits for the gate file of that stage
# (`<gates>/<i>`) before the next: the test decides when the harness moves on.
STAGED = """
import json, os, pathlib, sys, time
gates, stages = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])
for i, lines in enumerate(stages):
    with open(os.environ["AIDP_PROGRESS"], "a") as f:
        f.write("".join(line + "\\n" for line in lines))
    print(f"stage {i}", flush=True)
    while not (gates / str(i)).exists():
        time.sleep(0.02)
"""


def staged(scripts: Path, gates: Path, *stages: list[Any]) -> list[str]:
    """The argv of the staged harness with these stages (dicts are written as JSON)."""
    script = scripts / "staged.py"
    if not script.exists():
        write_script(scripts, "staged.py", STAGED)
    raw = [[line if isinstance(line, str) else json.dumps(line) for line in stage] for stage in stages]
    return [PYTHON, str(script), str(gates), json.dumps(raw)]


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    path = tmp_path / "gates"
    path.mkdir()
    return path


def progress_in_list(repo: Path, slug: str) -> dict[str, Any] | None:
    run = workstreams(repo)[slug]["currentRun"]
    return None if run is None else run["progress"]


# -- the CLI: plain view, ws list --json, ws status -----------------------------------------------------


def test_progress_reaches_the_plain_view_ws_list_and_ws_status(repo: Path, scripts: Path, gates: Path) -> None:
    first = {"percent": 40, "step": "IMPLEMENTATION", "message": "tests pass"}
    second = {"percent": 90, "message": "reviewing"}  # the step stays IMPLEMENTATION
    new_ws(repo, "a", shlex.join(staged(scripts, gates, [first], [second])))
    run = spawn_cli(repo, "ws", "run", "a")
    out = Lines(run)

    out.expect(r"^\[.*\] a running 40% IMPLEMENTATION: tests pass$")
    wait_until_sync(lambda: progress_in_list(repo, "a") == first, what="the progress in ws list --json")
    status = cli(repo, "ws", "status", "a")
    assert "  progress: 40% IMPLEMENTATION: tests pass" in status.stdout.splitlines(), status.stdout
    (gates / "0").touch()

    out.expect(r"^\[.*\] a running 90% IMPLEMENTATION: reviewing$")
    wait_until_sync(lambda: progress_in_list(repo, "a") == {**second, "step": "IMPLEMENTATION"}, what="the update")
    table = cli(repo, "ws", "list").stdout.splitlines()
    assert "  ↳ 90% IMPLEMENTATION: reviewing" in table, table
    (gates / "1").touch()

    out.expect(r"a completed")
    assert run.wait(timeout=60) == 0
    progress_lines = [line for line in out.seen if " a running " in line]
    assert len(progress_lines) == 2, out.seen  # one line per change, not one per tick
    assert progress_in_list(repo, "a") is None  # no run in flight: no progress


def test_steps_only_reports_get_step_wise_percentages_and_malformed_lines_are_counted(
    repo: Path, scripts: Path, gates: Path
) -> None:
    junk = [
        "not json",
        "[1, 2]",
        json.dumps({"percent": 140}),
        json.dumps({"percent": "half"}),
        json.dumps({"step": 3}),
        "x" * (LINE_MAX * 3),  # a huge line, cut at LINE_MAX: no longer a report
    ]
    stages = ([{"step": "PLAN"}], [*junk, {"step": "TEST"}], [{"step": "REVIEW"}])
    new_ws(repo, "s", shlex.join(staged(scripts, gates, *stages)))
    run = spawn_cli(repo, "ws", "run", "s", "--steps", "PLAN,CODE,TEST,REVIEW")
    out = Lines(run)
    out.expect(r" s running 0% PLAN$")  # step 1 of 4: nothing before it is done
    (gates / "0").touch()
    out.expect(r" s running 50% TEST$")  # step 3 of 4; the malformed lines changed nothing
    (gates / "1").touch()
    out.expect(r" s running 75% REVIEW$")
    (gates / "2").touch()
    out.expect(r"s completed")
    assert run.wait(timeout=60) == 0
    log = Path(workstreams(repo)["s"]["lastResult"]["logPath"]).read_text()
    assert f"[aidp] ignored {len(junk)} malformed progress report(s) in $AIDP_PROGRESS" in log


def test_a_fake_claude_gets_its_tool_use_as_messages(repo: Path, scripts: Path, gates: Path, tmp_path: Path) -> None:
    """`claude ... --output-format stream-json` writes no progress file: its events are the progress."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    events = (Path(__file__).parent / "data" / "claude-stream.jsonl").read_text().splitlines()
    write_script(
        bin_dir,
        "claude",
        f"""
        #!{PYTHON}
        import os, pathlib, sys, time
        events = [e.replace("/repo/.worktrees/c", os.getcwd()) for e in {events!r}]
        for i, event in enumerate(events[:-1]):
            print(event, flush=True)
            while not pathlib.Path({str(gates)!r}, str(i)).exists():
                time.sleep(0.02)
        print(events[-1], flush=True)
        """,
    )
    argv = ["claude", "-p", "{task}", "--output-format", "stream-json", "--verbose"]
    write_config(repo, f"[harness]\ncommand = {toml_list(argv)}\n")
    assert cli(repo, "ws", "new", "c", "Fix the login redirect").returncode == 0
    run = spawn_cli(repo, "ws", "run", "c", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    out = Lines(run)
    expected = {  # after event i: the message the plain view shows (None: that event says nothing new)
        1: "I'll look at the login handler first.",
        2: "Read src/auth/login.py",
        4: "Edit src/auth/login.py",
        6: "Bash: python -m pytest -q tests/test_login.py",
    }
    for i in range(len(events) - 1):
        if i in expected:
            out.expect(r" c running " + re.escape(expected[i]) + "$")
        (gates / str(i)).touch()
    out.expect(r"c completed")
    assert run.wait(timeout=60) == 0


# -- the server: aidp/wsStatus and $/progress -----------------------------------------------------------


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(['true'])}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params(progress=True)) as session:
        yield session


def reported(client: AidpClient) -> list[lsp.WorkDoneProgressReport]:
    values: list[Any] = [v for run in client.progress_reports.values() for v in run]
    return [v for v in values if isinstance(v, lsp.WorkDoneProgressReport)]


def progress_statuses(client: AidpClient, slug: str) -> list[dict[str, Any]]:
    return [n for n in client.statuses(slug) if n["status"] == "running" and n.get("progress")]


async def test_ws_status_carries_progress_and_the_run_percentage_counts_it(
    client: AidpClient, scripts: Path, gates: Path
) -> None:
    command = staged(scripts, gates, [{"percent": 50, "message": "half way"}])
    await client.call("aidp/wsNew", {"slug": "half", "task": "t", "command": command})
    await client.call("aidp/wsNew", {"slug": "quiet", "task": "t", "command": ["true"]})
    running = client.start_call("aidp/wsRun", {"slugs": ["half", "quiet"]})

    await wait_until(lambda: bool(progress_statuses(client, "half")), what="aidp/wsStatus with progress")
    status = progress_statuses(client, "half")[-1]
    assert status["progress"] == {"percent": 50, "step": None, "message": "half way"}
    assert status["startedAt"] is not None
    # quiet done (1 of 2) plus half at 50%: 75% of the run, before it ends.
    await wait_until(lambda: any(r.percentage == 75 for r in reported(client)), what="$/progress at 75%")
    assert (await client.workstreams())["half"]["currentRun"]["progress"]["percent"] == 50
    (gates / "0").touch()

    summary = await running
    assert summary["completed"] == 2
    percentages = [r.percentage for r in reported(client)]
    assert percentages == sorted(percentages) and percentages[-1] == 100, percentages  # type: ignore[type-var]


async def test_a_server_shows_the_progress_of_a_terminals_run(
    client: AidpClient, repo: Path, scripts: Path, gates: Path, driver: Callable[..., Any]
) -> None:
    command = staged(scripts, gates, [{"step": "BUILD", "message": "compiling"}])
    await client.call("aidp/wsNew", {"slug": "term", "task": "t", "command": command})
    terminal = driver(repo, "term", cli=True)
    await wait_until(lambda: bool(progress_statuses(client, "term")), what="a terminal run's progress")
    status = progress_statuses(client, "term")[-1]
    assert status["progress"] == {"percent": None, "step": "BUILD", "message": "compiling"}
    assert status["startedAt"] is not None
    (gates / "0").touch()
    _, stderr = await asyncio.to_thread(terminal.communicate, timeout=60)
    assert terminal.returncode == 0, stderr


# -- the parts, on their own ----------------------------------------------------------------------------


def test_reports_combine_key_by_key_and_a_new_step_starts_afresh() -> None:
    state = ProgressState(["A", "B"])
    assert state.current() == Progress()  # nothing said yet
    state.apply({"message": "warming up"})
    assert state.current() == Progress(message="warming up")
    state.apply({"step": "A", "percent": 10})  # a new step: the old message was the old step's
    assert state.current() == Progress(percent=10, step="A")
    state.apply({"message": "still A"})
    assert state.current() == Progress(percent=10, step="A", message="still A")
    state.apply({"step": "B"})
    assert state.current() == Progress(percent=50, step="B")  # step 2 of 2
    state.apply({"percent": 80, "message": None})
    assert state.current() == Progress(percent=80, step="B")
    state.apply({"step": "unlisted"})
    assert state.current() == Progress(step="unlisted")  # not in --steps: no percentage of its own
    state.apply({"step": None})
    assert state.current() == Progress()  # cleared: viewers are told it says nothing now


def test_parse_report_accepts_only_the_documented_shape() -> None:
    assert parse_report(b'{"percent": 12.5, "step": "X", "message": "m", "extra": 1}') == {
        "percent": 12.5,
        "step": "X",
        "message": "m",
    }
    assert parse_report(b'{"percent": null}') == {"percent": None}
    for bad in (b"", b"[]", b'"x"', b'{"percent": -1}', b'{"percent": true}', b'{"message": 5}', b"{"):
        assert parse_report(bad) is None, bad
    long = parse_report(json.dumps({"message": "word\n" * 500}).encode())
    assert long is not None and len(long["message"]) == MESSAGE_MAX and "\n" not in long["message"]


def test_lines_are_cut_and_resynchronised() -> None:
    lines = ByteLines(4)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"cdefg\nhi\nj") == [(b"abcd", True), (b"hi", False)]
    lines.resync()  # bytes were skipped: "j" and what follows up to the newline are lost
    assert lines.feed(b"k\nlm\n") == [(b"", True), (b"lm", False)]


def test_stream_json_messages_from_a_recorded_session(tmp_path: Path) -> None:
    worktree = "/repo/.worktrees/c"
    stream = StreamJson(worktree)
    text = (Path(__file__).parent / "data" / "claude-stream.jsonl").read_text()
    messages = [stream.feed(line + "\n", 0) for line in text.splitlines()]
    assert messages == [
        None,  # system init
        "I'll look at the login handler first.",
        "Read src/auth/login.py",
        None,  # tool result
        "Edit src/auth/login.py",
        None,
        "Bash: python -m pytest -q tests/test_login.py",
        None,
        "The redirect loop is fixed: the handler no longer redirects an authenticated user to /login.",
        None,  # the result
    ]
    # An event too long to parse (a whole file written) still names its tool and file.
    write = {"file_path": f"{worktree}/big.txt", "content": "x" * 2_000_000}
    huge = {"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Write", "input": write}]}}
    assert stream.feed(json.dumps(huge) + "\n", 0) == "Write big.txt"
