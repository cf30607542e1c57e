"""The fault-injection suite (issue 8, G): real processes and repositories, hostile harnesses, and
aidp killed at random moments (with an `on_end` hook of a hostile kind running, once a
workstream ended; or while workstreams are made, with a hostile git `post-checkout` hook). After
every fault the same checks: nothing of the run alive, no
status `queued`/`running` that nothing runs, `PRAGMA integrity_check` ok, every log whole. The
counts (kills, orphans, stuck) are printed at the end of the session.

The moments are drawn from a seeded generator (`AIDP_FAULT_SEED`, default 8), so a failure can
be replayed; they are facts (after the k-th harness has started), never sleeps."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cli_helpers import new_ws, spawn_cli, workstreams
from conftest import write_config
from server_helpers import initialize_params, lsp_session, raw_session, server_command, stored_workstreams
from support import cli, git_hook, make_repo, pid_alive, wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("AIDP_FAULT_SEED", "8"))
COUNTS: collections.Counter[str] = collections.Counter()

# Every process of a harness appends its pid to <board>/<slug>.pids, then prints numbered lines
# "<pid> <n>" into the log. The kinds: one that ends early (while others go on), one that
# ignores SIGTERM, one that drops its environment, one that leaves its group with setsid, and
# one that double-forks (its worker is orphaned at once).
LOOP = "echo $$ >> {pids}; i=0; while :; do echo $$ $i; i=$((i+1)); sleep 0.05; done"
KINDS = {
    "quick": "echo $$ >> {pids}; echo $$ 0",
    "plain": LOOP,
    "stubborn": "trap '' TERM; " + LOOP,
    "scrubbed": "exec env -i PATH=/usr/bin:/bin sh -c " + shlex.quote(LOOP),
    "setsid": "setsid sh -c " + shlex.quote(LOOP) + " & " + LOOP,
    "doublefork": "(sh -c " + shlex.quote(LOOP) + " &); " + LOOP,
}
LINE = re.compile(r"^(\d+) (\d+)$")


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    figures = ", ".join(f"{COUNTS[k]} {k}" for k in ("rounds", "kills", "orphans", "stuck", "logs checked"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # printed even when the tests pass
            reporter.write_line(f"\nfault injection: {figures}")


def rng(name: str) -> random.Random:
    return random.Random(f"{SEED}-{name}")


def create(repo: Path, board: Path, round_name: str, kinds: list[str]) -> list[str]:
    slugs = []
    for kind in kinds:
        slug = f"{round_name}-{kind}"
        script = KINDS[kind].format(pids=board / f"{slug}.pids")
        new_ws(repo, slug, shlex.join(["sh", "-c", script]))
        slugs.append(slug)
    return slugs


def hooked(r: random.Random, board: Path, bound: int) -> str:
    """A config whose `on_end` hook is one of the hostile kinds that never ends by itself: it runs
    while the other workstreams go on, when aidp is killed."""
    kind = r.choice([k for k in KINDS if k != "quick"])
    hook = ["sh", "-c", KINDS[kind].format(pids=f"{board}/hook-$AIDP_SLUG.pids")]
    return (
        f"[harness]\ngrace_s = 0.5\nmax_concurrent = {bound}\n[hooks]\non_end = {json.dumps(hook)}\ntimeout_s = 120\n"
    )


def hook_started_if_due(board: Path, slugs: list[str]) -> bool:
    """Once the quick workstream has run, its hook's pid is on the board (`scrubbed` drops the slug)."""
    quick = next(slug for slug in slugs if slug.endswith("quick"))
    return not (board / f"{quick}.pids").exists() or any(board.glob("hook-*.pids"))


def started(board: Path, slugs: list[str]) -> int:
    return sum(1 for slug in slugs if (board / f"{slug}.pids").exists())


def recorded_running(repo: Path) -> int:
    return sum(ws.status == "running" for ws in stored_workstreams(repo).values())


def check_invariants(repo: Path, board: Path, logs: bool = True) -> None:
    """After a fault and the next aidp command: the four promises of issue 8 (`logs`: unless the
    disk was full, where the harnesses' own writes failed)."""
    listed = workstreams(repo)  # an aidp command: it recovers what a dead process left
    stuck = [slug for slug, ws in listed.items() if ws["status"] in ("queued", "running")]
    alive = [pid for pids in board.glob("*.pids") for pid in map(int, pids.read_text().split()) if pid_alive(pid)]
    COUNTS["stuck"] += len(stuck)
    COUNTS["orphans"] += len(alive)
    assert not alive, f"processes of a run outlived it: {alive}"
    assert not stuck, f"statuses nothing runs: {stuck}"
    db = sqlite3.connect(repo / ".aidp" / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    for log in (repo / ".aidp" / "logs").rglob("*.log") if logs else []:
        check_log(log)


def check_log(log: Path) -> None:
    """Every line whole and every writer's numbers consecutive: nothing lost or garbled."""
    expected: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if line.startswith("[aidp]"):
            continue
        match = LINE.match(line)
        assert match, f"{log}: a garbled line {line!r}"
        pid, n = match.groups()
        assert int(n) == expected.get(pid, 0), f"{log}: {pid} skipped from {expected.get(pid, 0)} to {n}"
        expected[pid] = int(n) + 1
    COUNTS["logs checked"] += 1


@pytest.mark.parametrize("round_no", range(4))
def test_cli_killed_mid_run(tmp_path: Path, round_no: int) -> None:
    r = rng(f"cli-{round_no}")
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    env = {"AIDP_CGROUPS": "0"} if round_no % 2 else {}  # half the rounds without cgroups
    bound = r.randint(2, 6)
    write_config(repo, hooked(r, board, bound))
    slugs = create(repo, board, f"r{round_no}", r.sample(list(KINDS), len(KINDS)))
    owner = spawn_cli(repo, "ws", "run", *slugs, "--json", env=env)
    k = r.randint(1, bound)  # the loops never end: at most `bound` of them start
    wait_until_sync(lambda: started(board, slugs) >= k, what=f"{k} harnesses started")
    wait_until_sync(lambda: hook_started_if_due(board, slugs), what="the quick workstream's hook started")
    if env:
        # Without cgroups a harness that drops its environment is found by its recorded pid,
        # which exists once its start is recorded (README: what is guaranteed where).
        wait_until_sync(lambda: recorded_running(repo) >= k, what=f"{k} starts recorded")
    owner.send_signal(signal.SIGKILL)
    owner.wait(30)
    COUNTS["kills"] += 1
    COUNTS["rounds"] += 1
    check_invariants(repo, board)
    # Whatever was interrupted runs again: nothing is left claimed (and no hook keeps it waiting).
    write_config(repo, f"[harness]\ngrace_s = 0.5\nmax_concurrent = {bound}\n")
    rerun = cli(repo, "ws", "run", *[s for s in slugs if s.endswith("quick")], "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr


@pytest.mark.parametrize("round_no", range(3))
async def test_server_killed_mid_run(tmp_path: Path, round_no: int) -> None:
    r = rng(f"server-{round_no}")
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    bound = r.randint(2, 6)
    write_config(repo, hooked(r, board, bound))
    slugs = create(repo, board, f"s{round_no}", r.sample(list(KINDS), len(KINDS)))
    async with raw_session(server_command(repo), tmp_path) as client:
        await client.initialize()
        client.request_nowait("aidp/wsRunAll", {})
        k = r.randint(1, bound)
        await wait_until(lambda: started(board, slugs) >= k, what=f"{k} harnesses started")
        await wait_until(lambda: hook_started_if_due(board, slugs), what="the quick workstream's hook started")
        client.proc.kill()
        await client.proc.wait()
    COUNTS["kills"] += 1
    COUNTS["rounds"] += 1
    await asyncio.to_thread(check_invariants, repo, board)


def operations_held(repo: Path) -> int:
    with closing(sqlite3.connect(repo / ".aidp" / "state.db")) as db:
        return int(db.execute("SELECT count(*) FROM operations").fetchone()[0])


@pytest.mark.parametrize("face", ["cli", "server"])
@pytest.mark.parametrize("round_no", range(2))
async def test_killed_mid_creation_with_a_hostile_git_hook(tmp_path: Path, face: str, round_no: int) -> None:
    """Workstreams made at once while the repository's `post-checkout` hook is of a hostile kind
    that never ends; aidp killed once some of the hooks started (others are still in git or
    before it). Then the same checks, nothing held, and every slug can be made again."""
    r = rng(f"new-{face}-{round_no}")
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    kind = r.choice([k for k in KINDS if k != "quick"])
    git_hook(repo, "post-checkout", f"exec >> {board}/hook.out 2>&1; " + KINDS[kind].format(pids=board / "hook.pids"))
    slugs = [f"n{round_no}-{i}" for i in range(r.randint(2, 4))]
    k = r.randint(1, len(slugs))

    def hooks_started() -> bool:
        pids = board / "hook.pids"
        return pids.exists() and len(pids.read_text().split()) >= k

    if face == "cli":
        owners = [spawn_cli(repo, "ws", "new", slug, "a task") for slug in slugs]
        await wait_until(hooks_started, what=f"{k} git hooks started")
        for owner in owners:
            owner.send_signal(signal.SIGKILL)
            owner.wait(30)
    else:
        async with raw_session(server_command(repo), tmp_path) as client:
            await client.initialize()
            for slug in slugs:
                client.request_nowait("aidp/wsNew", {"slug": slug, "task": "a task"})
            await wait_until(hooks_started, what=f"{k} git hooks started")
            client.proc.kill()
            await client.proc.wait()
    COUNTS["kills"] += 1
    COUNTS["rounds"] += 1
    await asyncio.to_thread(check_invariants, repo, board)
    assert operations_held(repo) == 0
    git_hook(repo, "post-checkout", "exit 0")
    for slug in slugs:
        again = await asyncio.to_thread(cli, repo, "ws", "new", slug, "a task")
        assert again.returncode == 0, again.stderr
    assert set(await asyncio.to_thread(workstreams, repo)) == set(slugs)


def test_cancel_and_timeout_of_hostile_harnesses(tmp_path: Path) -> None:
    """No kill: cancel from another process and a timeout must end every kind just as surely."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    write_config(repo, "[harness]\ngrace_s = 0.5\nmax_concurrent = 6\n")
    slugs = create(repo, board, "c", [k for k in KINDS if k != "quick"])
    timed = create(repo, board, "t", [k for k in KINDS if k != "quick"])
    run = spawn_cli(repo, "ws", "run", *slugs, "--json")
    wait_until_sync(lambda: started(board, slugs) == len(slugs), what="every harness started")
    assert cli(repo, "ws", "cancel", *slugs).returncode == 0
    assert run.wait(60) == 1
    out = cli(repo, "ws", "run", *timed, "--timeout", "1", "--json")
    assert {r["status"] for r in json.loads(out.stdout)["results"]} == {"failed"}
    COUNTS["rounds"] += 1
    check_invariants(repo, board)


@contextlib.contextmanager
def small_state_dir(repo: Path) -> Iterator[Path]:
    """`.aidp` on a 2 MiB tmpfs, to be filled. (Tests run as root, as CI does.)"""
    state = repo / ".aidp"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], capture_output=True)
    assert mounted.returncode == 0, f"this suite needs root to mount a tmpfs: {mounted.stderr!r}"
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(state: Path) -> Path:
    filler = state / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


def test_disk_full_under_the_state_directory(tmp_path: Path) -> None:
    """A harness fills `.aidp`: the run ends, nothing hangs or lies, and once space is back every
    status is final and the database is intact."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    with small_state_dir(repo) as state:
        filler = state / "filler"
        write_config(repo, "[harness]\ngrace_s = 0.5\nmax_concurrent = 3\n")
        slugs = create(repo, board, "d", ["quick", "plain"])
        new_ws(repo, "d-fill", shlex.join(["sh", "-c", f"head -c 8M /dev/zero > {filler}; exit 0"]))
        run = spawn_cli(repo, "ws", "run", *slugs, "d-fill", "--timeout", "3", "--json")
        _, err = run.communicate(timeout=120)
        assert "Traceback" not in err, err
        COUNTS["rounds"] += 1
        filler.unlink()
        check_invariants(repo, board, logs=False)


def test_a_run_killed_then_a_full_disk_is_still_listed_and_recorded_once_space_is_back(tmp_path: Path) -> None:
    """aidp SIGKILLed mid-run, then the disk fills: the next list ends what the run left and says
    it cannot record that yet (no traceback); the first list once space is back records it."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    with small_state_dir(repo) as state:
        write_config(repo, "[harness]\ngrace_s = 0.5\n")
        (slug,) = create(repo, board, "k", ["stubborn"])
        owner = spawn_cli(repo, "ws", "run", slug)
        wait_until_sync(lambda: recorded_running(repo) == 1, what="the start recorded")
        owner.kill()
        owner.wait(30)
        filler = fill(state)
        listed = cli(repo, "ws", "list")
        assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
        assert "could not be recorded (database or disk is full)" in listed.stderr
        assert not any(pid_alive(int(p)) for p in (board / f"{slug}.pids").read_text().split())
        filler.unlink()
        COUNTS["rounds"] += 1
        check_invariants(repo, board)
        assert workstreams(repo)[slug]["status"] == "cancelled"


def test_a_run_whose_claim_a_full_disk_refuses_says_so_and_leaves_nothing_claimed(tmp_path: Path) -> None:
    """A full disk refuses the COMMIT of a run's claim: the run says so in one line (never a
    traceback), and once space is back nothing claims the workstream and nothing says it ran."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    with small_state_dir(repo) as state:
        (slug,) = create(repo, board, "w", ["quick"])
        with closing(sqlite3.connect(state / "state.db")) as reader:  # keeps the WAL, so COMMIT is what fails
            reader.execute("SELECT count(*) FROM workstreams").fetchone()
            filler = fill(state)
            run = cli(repo, "ws", "run", slug)
            assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
            assert "the state database refused a write" in run.stderr
            filler.unlink()
        listed = cli(repo, "ws", "list", "--json")
        assert "interrupted" not in listed.stderr, listed.stderr
        assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == {slug: "active"}
        assert not (board / f"{slug}.pids").exists()
        COUNTS["rounds"] += 1
        check_invariants(repo, board)


async def test_a_server_on_a_full_disk_lists_refuses_in_one_line_and_recovers(tmp_path: Path) -> None:
    """The disk fills under a running server: lists are answered, a run it cannot claim is refused
    with the reason (-32803, not an internal error), and once space is back it runs."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    with small_state_dir(repo) as state:
        (slug,) = create(repo, board, "f", ["quick"])
        async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
            await client.workstreams()  # the server holds the database open from here on
            filler = fill(state)
            assert (await client.workstreams())[slug]["status"] == "active"
            refused = await client.fails("aidp/wsRun", {"slugs": [slug]})
            assert refused.code == -32803 and "the state database refused a write" in refused.message
            filler.unlink()
            summary = await client.call("aidp/wsRun", {"slugs": [slug]})
            assert [r["status"] for r in summary["results"]] == ["completed"]
        COUNTS["rounds"] += 1
        check_invariants(repo, board)


def test_rm_racing_run(tmp_path: Path) -> None:
    """`ws rm --force` and `ws run` of one slug from two processes, several times: the run either
    never starts or has its worktree for its whole life; afterwards nothing lingers."""
    repo, board = make_repo(tmp_path), tmp_path / "board"
    board.mkdir()
    write_config(repo, "[harness]\ngrace_s = 0.5\n")
    for attempt in range(6):
        slug = f"race{attempt}"
        check = f'echo $$ >> {board / slug}.pids; test -d "$AIDP_WORKTREE" && sleep 0.2 && test -d "$AIDP_WORKTREE"'
        new_ws(repo, slug, shlex.join(["sh", "-c", check]))
        run = spawn_cli(repo, "ws", "run", slug, "--json")
        rm = spawn_cli(repo, "ws", "rm", slug, "--force")
        run_out, _ = run.communicate(timeout=60)
        rm.communicate(timeout=60)
        if run_out.strip():  # it ran: its worktree was there from its start to its end
            assert [r["status"] for r in json.loads(run_out)["results"]] == ["completed"]
        listed = workstreams(repo)
        assert slug not in listed or listed[slug]["status"] not in ("queued", "running")
        COUNTS["rounds"] += 1
    check_invariants(repo, board)
