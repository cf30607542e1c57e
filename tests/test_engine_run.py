"""End-to-end runs: the concurrency bound, output, the task reaching the harness verbatim,
missing programs and commands, duplicates, run_all and pause/resume. Real git, real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import (
    read_int,
    toml_list,
    wait_file,
    wait_status,
    write_config,
    write_script,
)
from support import PYTHON, group_members, pid_alive

from aidp.engine import Engine, Status
from aidp.engine.errors import Busy, Refused
from aidp.engine.events import EngineEvent, OutputChunk, RunFinished, StatusChanged

pytestmark = pytest.mark.timeout(120)


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once; at equal stamps an end counts before a start."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


STAMPS = """
    import os, sys, time
    stamps, slug = sys.argv[1], sys.argv[2]

    def note(kind):
        fd = os.open(stamps, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{kind} {slug} {time.monotonic()!r}\\n".encode())
        os.close(fd)

    note("start")
    time.sleep(0.5)
    # Hold on until three are started (or 20 s pass): reaching the bound then does not depend
    # on how slowly this machine starts Python, and exceeding it is still caught.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(stamps) as f:
            if sum(line.startswith("start ") for line in f) >= 3:
                break
        time.sleep(0.05)
    time.sleep(0.3)
    note("end")
"""


@pytest.mark.parametrize("via", ["config", "option"])
async def test_concurrency_bound_from_childrens_own_stamps(
    engine: Engine, repo: Path, scripts: Path, markers: Path, via: str
) -> None:
    script = write_script(scripts, "stamps.py", STAMPS)
    stamps = markers / "stamps"
    command = [PYTHON, str(script), str(stamps), "{slug}"]
    slugs = [f"ws-{i}" for i in range(7)]
    if via == "config":
        write_config(repo, f"[harness]\nmax_concurrent = 3\ncommand = {toml_list(command)}\n")
        for slug in slugs:
            await engine.create(slug, f"task {slug}")
        summary = await engine.run(slugs)
    else:
        write_config(repo, "[scheduler]\nmax_concurrent = 5\n")  # the bound; the option lowers its share
        for slug in slugs:
            await engine.create(slug, f"task {slug}", command=command)
        summary = await engine.run(slugs, max_concurrent=3)

    assert summary.ok, summary
    assert (summary.total, summary.completed) == (7, 7)
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for line in stamps.read_text().splitlines():
        kind, slug, stamp = line.split()
        (starts if kind == "start" else ends)[slug] = float(stamp)
    assert set(starts) == set(ends) == set(slugs)
    overlap = _max_overlap([(starts[s], ends[s]) for s in slugs])
    assert overlap == 3


async def test_output_chunks_concatenate_to_the_log(engine: Engine, scripts: Path) -> None:
    script = write_script(
        scripts,
        "talk.py",
        """
        import sys, time
        for i in range(5):
            print(f"line {i} ünïcödé", flush=True)
            time.sleep(0.15)
        sys.stderr.write("to stderr\\n")
        """,
    )
    await engine.create("talk", "say things", command=[PYTHON, str(script)])
    events: list[EngineEvent] = []
    unsubscribe = engine.events.subscribe(events.append)
    summary = await engine.run(["talk"])
    unsubscribe()

    assert summary.ok
    path, text = await engine.log("talk")
    assert path is not None and path == summary.results[0].log_path
    assert Path(path).parent.name == "talk" and Path(path).name == f"{summary.run_id}.log"
    assert text == "".join(f"line {i} ünïcödé\n" for i in range(5)) + "to stderr\n"
    chunks = [e.text for e in events if isinstance(e, OutputChunk) and e.slug == "talk"]
    assert "".join(chunks) == text
    assert all(e.run_id == summary.run_id for e in events if isinstance(e, OutputChunk))
    # Event order per workstream: queued, running, (output), completed; then the run's end.
    statuses = [e.status for e in events if isinstance(e, StatusChanged) and e.slug == "talk"]
    assert statuses == [Status.QUEUED, Status.RUNNING, Status.COMPLETED]
    assert isinstance(events[-1], RunFinished) and events[-1].summary.run_id == summary.run_id


async def test_output_flood_is_bounded_in_events_but_complete_in_the_log(engine: Engine) -> None:
    size = 20_000_000
    await engine.create("flood", "flood", command=["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"])
    events: list[OutputChunk] = []
    engine.events.subscribe(lambda e: events.append(e) if isinstance(e, OutputChunk) else None)
    summary = await engine.run(["flood"])

    assert summary.ok, summary
    log_path = summary.results[0].log_path
    assert log_path is not None
    assert os.path.getsize(log_path) == size
    total = sum(len(e.text) for e in events)
    assert total < size // 2, f"events carried {total} characters of a {size}-byte flood"
    assert all(len(e.text) <= 64 * 1024 for e in events)
    # Every byte is either shown or counted as skipped, and a person sees where it was skipped.
    assert total + sum(e.skipped for e in events) == size
    assert any("bytes of output skipped; the log file has them all" in e.shown for e in events if e.skipped)
    # The tail the engine shows is bounded too, and ends with the last bytes.
    _, tail = await engine.log("flood", tail_bytes=1000)
    assert tail == "x" * 1000


async def test_task_with_shell_metacharacters_reaches_the_harness_verbatim(
    engine: Engine, repo: Path, tmp_path: Path, scripts: Path, markers: Path
) -> None:
    script = write_script(
        scripts,
        "record.py",
        """
        import json, os, sys
        out = sys.argv[1]
        with open(out, "w") as f:
            json.dump({
                "argv": sys.argv[2:],
                "env": {k: v for k, v in os.environ.items() if k.startswith("AIDP_") or k == "EXTRA"},
                "cwd": os.getcwd(),
                "stdin": sys.stdin.read(),
            }, f)
        """,
    )
    task = "$(touch pwned); rm -rf x `touch pwned2` && touch pwned3 | {slug} {branch} 'q' \"dq\" \\ ;\n  $HOME"
    write_config(repo, '[harness]\nenv = { EXTRA = "from config", AIDP_SLUG = "overridden" }\n')
    ws = await engine.create(
        "meta",
        task,
        command=[PYTHON, str(script), str(markers / "seen.json"), "{task}", "--slug={slug}", "{mode}", "{steps}"],
    )
    (repo / "x").mkdir()
    (repo / "x" / "keep").write_text("keep")
    summary = await engine.run(["meta"], mode="plan", steps=["a", "b"])

    assert summary.ok, summary
    seen = json.loads((markers / "seen.json").read_text())
    assert seen["argv"] == [task, "--slug=meta", "plan", "a,b"]
    assert seen["env"]["AIDP_TASK"] == task
    assert seen["env"]["AIDP_SLUG"] == "meta"  # the engine's value wins over the config's
    assert seen["env"]["AIDP_RUN_ID"] == summary.run_id
    assert seen["env"]["AIDP_MODE"] == "plan"
    assert seen["env"]["AIDP_STEPS"] == "a,b"
    assert seen["env"]["AIDP_WORKTREE"] == ws.path
    assert seen["env"]["EXTRA"] == "from config"
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(ws.path)
    assert seen["stdin"] == ""  # stdin is /dev/null
    assert (await engine.get("meta")).task == task
    assert (repo / "x" / "keep").exists()
    pwned = [p for p in tmp_path.rglob("pwned*")]
    assert pwned == []
    assert not list(Path(ws.path).glob("pwned*"))


async def test_missing_program_is_an_error_and_the_others_complete(engine: Engine, markers: Path) -> None:
    await engine.create("broken", "t", command=["/nonexistent/aidp-harness", "{task}"])
    await engine.create("typo", "t", command=["aidp-no-such-program-xyz"])
    await engine.create("good", "t", command=["sh", "-c", f"echo ran > {markers}/good"])
    summary = await engine.run(["broken", "good", "typo"], max_concurrent=1)

    by_slug = {r.slug: r for r in summary.results}
    assert (summary.total, summary.completed, summary.errored) == (3, 1, 2)
    assert by_slug["good"].status == Status.COMPLETED
    assert (markers / "good").read_text() == "ran\n"
    for slug, program in (("broken", "/nonexistent/aidp-harness"), ("typo", "aidp-no-such-program-xyz")):
        result = by_slug[slug]
        assert result.status == Status.ERROR
        assert result.error is not None
        assert program in result.error and "no such program" in result.error
        assert "[harness] command" in result.error  # says what to fix
        ws = await engine.get(slug)
        assert ws.status == Status.ERROR
        assert ws.last_result is not None and ws.last_result.error == result.error
        _, text = await engine.log(slug)
        assert "no such program" in text
        history = await engine.history(slug)
        assert history[-1].status == Status.ERROR and history[-1].message == result.error
        assert Status.RUNNING not in {event.status for event in history}  # it never ran, and never said so


async def test_not_executable_program_says_permission(engine: Engine, scripts: Path) -> None:
    script = scripts / "not-exec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    await engine.create("noexec", "t", command=[str(script)])
    summary = await engine.run(["noexec"])
    assert summary.results[0].status == Status.ERROR
    assert summary.results[0].error is not None and "permission denied" in summary.results[0].error


async def test_no_command_configured_is_an_error(engine: Engine, repo: Path, markers: Path) -> None:
    await engine.create("nocmd", "t")
    await engine.create("withcmd", "t", command=["sh", "-c", f"touch {markers}/withcmd"])
    summary = await engine.run(["nocmd", "withcmd"])
    by_slug = {r.slug: r for r in summary.results}
    assert by_slug["nocmd"].status == Status.ERROR
    assert by_slug["nocmd"].error is not None and "no command configured" in by_slug["nocmd"].error
    assert "[harness] command" in by_slug["nocmd"].error
    assert by_slug["withcmd"].status == Status.COMPLETED
    assert (await engine.get("nocmd")).status == Status.ERROR

    # Configured afterwards: the next run picks it up without reopening the engine.
    write_config(repo, f'[harness]\ncommand = ["sh", "-c", "touch {markers}/$AIDP_SLUG"]\n')
    summary = await engine.run(["nocmd"])
    assert summary.ok and (markers / "nocmd").exists()


async def test_failing_harness_records_exit_code_and_last_lines(engine: Engine) -> None:
    await engine.create("fails", "t", command=["sh", "-c", "echo first; echo 'the reason'; exit 3"])
    summary = await engine.run(["fails"])
    result = summary.results[0]
    assert (result.status, result.exit_code, summary.failed) == (Status.FAILED, 3, 1)
    assert result.error is not None and "exit code 3" in result.error and "the reason" in result.error
    assert not summary.ok
    assert (await engine.get("fails")).status == Status.FAILED


async def test_duplicate_slugs_collapse(engine: Engine, markers: Path) -> None:
    await engine.create("dup", "t", command=["sh", "-c", f"echo $$ >> {markers}/dup"])
    summary = await engine.run(["dup", "dup", "dup"])
    assert summary.total == 1 and summary.ok
    assert len((markers / "dup").read_text().splitlines()) == 1


async def test_clean_exit_leaves_no_grandchild(engine: Engine, markers: Path) -> None:
    await engine.create(
        "orphan", "t", command=["sh", "-c", f"echo $$ > {markers}/pgid; sleep 300 & echo $! > {markers}/gc; exit 0"]
    )
    summary = await engine.run(["orphan"])
    assert summary.ok
    assert not pid_alive(read_int(markers / "gc"))
    assert group_members(read_int(markers / "pgid")) == []


async def test_run_all_skips_paused_completed_and_running(engine: Engine, markers: Path) -> None:
    record = ["sh", "-c", f'echo "$AIDP_RUN_ID" >> {markers}/$AIDP_SLUG']
    release = markers / "release"
    wait_release = f"touch {markers}/busy.started; while [ ! -e {release} ]; do sleep 0.05; done"
    for slug in ("done", "paused", "fresh"):
        await engine.create(slug, "t", command=record)
    await engine.create("failing", "t", command=["false"])
    await engine.create("busy", "t", command=["sh", "-c", wait_release])
    await engine.run(["done", "failing"])
    await engine.set_paused("paused", True)
    busy_run = await engine.start(["busy"])
    await wait_file(markers / "busy.started")

    summary = await engine.run_all()
    assert sorted(r.slug for r in summary.results) == ["failing", "fresh"]
    assert (markers / "fresh").read_text().strip() == summary.run_id
    assert not (markers / "paused").exists()
    assert len((markers / "done").read_text().splitlines()) == 1
    assert (await engine.get("paused")).status == Status.PAUSED
    assert (await engine.get("busy")).status == Status.RUNNING

    release.touch()
    assert (await engine.wait(busy_run)).ok
    # Everything left is completed, paused or failed: run_all again runs only the failed one.
    summary = await engine.run_all()
    assert [r.slug for r in summary.results] == ["failing"]


async def test_run_all_with_nothing_to_do(engine: Engine) -> None:
    summary = await engine.run_all()
    assert (summary.total, summary.results) == (0, [])


async def test_pause_and_resume(engine: Engine, markers: Path) -> None:
    release = markers / "release"
    await engine.create(
        "p", "t", command=["sh", "-c", f"touch {markers}/started; while [ ! -e {release} ]; do sleep 0.05; done"]
    )
    ws = await engine.set_paused("p", True)
    assert ws.status == Status.PAUSED
    with pytest.raises(Refused, match="paused: p"):
        await engine.start(["p"])
    assert not (markers / "started").exists()
    assert (await engine.set_paused("p", False)).status == Status.ACTIVE

    run = await engine.start(["p"])
    await wait_file(markers / "started")
    with pytest.raises(Busy, match="p"):
        await engine.set_paused("p", True)
    await wait_status(engine, "p", Status.RUNNING)
    release.touch()
    assert (await engine.wait(run)).ok
    assert (await engine.set_paused("p", True)).status == Status.PAUSED
    # Resuming restores the last run's status.
    assert (await engine.set_paused("p", False)).status == Status.COMPLETED
    messages = [e.message for e in await engine.history("p", limit=100)]
    assert messages[0] == "created" and "paused" in messages and messages[-1] == "resumed"
