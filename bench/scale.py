"""Scenarios: thousands of workstreams (issue 13, goal 3).

`scale`: the create curve: how long the Nth `aidp/wsNew` takes as worktrees accumulate, against
`git worktree add -b` in the same repository at the same count, the two alternating; and the list
at each count: `aidp/wsList` on the same server and the whole `aidp ws list` process.

`list10k`: the list at 10,000 workstreams, in a repository made in bulk (creating 10,000 one by one
takes most of an hour on this machine): real branches, worktrees in git's layout, records in the
state database, as `aidp/wsNew` leaves them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

from aidp.engine import gitrepo
from aidp.engine.engine import Engine
from aidp.engine.store import Store
from bench.common import Params, Row, Section, Stopwatch, fmt_ms, median, percentile
from bench.fixtures import (
    ENV,
    aidp_cli,
    create_workstreams,
    make_repo,
    proc_status,
    process_cpu,
    sh,
    sh_cpu,
    start_server,
)
from bench.rpc import RpcClient
from bench.startup import keep_table, script

CHECKPOINTS = (10, 100, 1000, 2000, 5000, 10000)
WINDOW = 5  # creations timed on each side around a checkpoint (alternating)
LISTS = 20  # `aidp/wsList` requests per checkpoint
LIST10K_LISTS = (
    400  # `aidp/wsList` requests on the idle 10,000 (p99 then is between the 4th and 5th slowest, not one of two)
)
SETS = 3  # `aidp/wsSet` of one workstream, each followed by a list, at 10,000
CLI_LISTS = 3  # `aidp ws list` processes per checkpoint
RACY_S = 2.1  # dirty.RACY_NS and a little: after it, a list reuses what git said (see aidp.engine.dirty)


async def run(p: Params) -> list[Section]:
    biggest = 200 if p.quick else int(os.environ.get("AIDP_BENCH_SCALE_N", "10000"))
    checkpoints = [n for n in CHECKPOINTS if n <= biggest]
    repo = make_repo(p.work / "scale", ["true"])
    client = await start_server(repo, p.work / "server-scale.log")
    created = 0
    curve: list[Point] = []
    try:
        for checkpoint in checkpoints:
            while created < checkpoint - WINDOW:
                await new(client, created)
                created += 1
            aidp, git = [], []
            for i in range(WINDOW):  # alternating, so both sides see the same count and load
                aidp.append(await new(client, created))
                created += 1
                path = repo / ".worktrees" / f"ref-{checkpoint}-{i}"
                git.append(sh(["git", "worktree", "add", "-q", "-b", f"ref/{checkpoint}-{i}", str(path), "HEAD"], repo))
            curve.append(await point(client, repo, checkpoint, aidp, git))
            print(f"   {checkpoint}: wsNew {fmt_ms(median(aidp))}, git {fmt_ms(median(git))}", flush=True)
    finally:
        await client.close()
    return [section(curve)]


async def new(client: RpcClient, i: int) -> float:
    with Stopwatch() as watch:
        await client.request("aidp/wsNew", {"slug": f"ws-{i:05d}", "task": f"bench task {i}"})
    return watch.elapsed


@dataclasses.dataclass
class Point:
    n: int
    ws_new_s: list[float]
    git_add_s: list[float]
    first_list_s: float
    next_list_s: float  # once RACY_S passed: the first that may be answered from the server's snapshot
    ws_list_s: list[float]
    ws_list_read_s: list[float]  # the same lists until the answer's last byte was read, before decoding
    ws_list_cpu_s: float  # the server's CPU per request (its git children included)
    cli_list_s: list[float]
    cli_list_cpu_s: list[float]
    load: float


async def point(
    client: RpcClient, repo: Path, n: int, aidp: list[float], git: list[float], lists: int = LISTS
) -> Point:
    """The lists at this count. The first after creating asks git of every new worktree; once the
    racy window has passed, the next one and the `lists` after it are answered from the server's
    snapshot while nothing changed, its worktrees checked on the request while that is cheap, else
    in the background (aidp.server.snapshot): all are measured."""
    first, _ = await ws_list(client)
    time.sleep(RACY_S)
    next_list, _ = await ws_list(client)
    cpu = process_cpu(client.pid)
    lists_s = [await ws_list(client) for _ in range(lists)]
    cpu = (process_cpu(client.pid) - cpu) / lists
    cli = [sh_cpu([*aidp_cli(), "ws", "list"], cwd=repo) for _ in range(CLI_LISTS)]
    return Point(
        n,
        aidp,
        git,
        first,
        next_list,
        [decoded for decoded, _ in lists_s],
        [read for _, read in lists_s],
        cpu,
        [t for t, _ in cli],
        [c for _, c in cli],
        os.getloadavg()[0],
    )


async def ws_list(client: RpcClient) -> tuple[float, float]:
    """One `aidp/wsList`: until the client decoded the answer, and until its last byte was read
    (what the server took and the pipe; at 10,000 the client's `json.loads` of 6 MB costs more)."""
    started = time.perf_counter()
    await client.request("aidp/wsList", {})
    return time.perf_counter() - started, client.answer_read_at - started


def section(curve: list[Point]) -> Section:
    s = Section("scale", f"Scale: the create curve and the list, up to {curve[-1].n:,} workstreams")
    first_new, first_git = median(curve[0].ws_new_s), median(curve[0].git_add_s)
    for at in curve:
        n, aidp, git, lists, cli = f"{at.n:,}", at.ws_new_s, at.git_add_s, at.ws_list_s, at.cli_list_s
        s.rows += [
            Row(
                f"{n}: aidp/wsNew",
                fmt_ms(median(aidp)),
                f"range {fmt_ms(min(aidp))}–{fmt_ms(max(aidp))}; load {at.load:.1f}",
                f"{median(aidp) / first_new:.2f}x",
            ),
            Row(
                f"{n}: git worktree add -b",
                fmt_ms(median(git)),
                f"range {fmt_ms(min(git))}–{fmt_ms(max(git))}",
                f"{median(git) / first_git:.2f}x",
            ),
            Row(
                f"{n}: aidp/wsList p50 / p99",
                f"{fmt_ms(median(lists))} / {fmt_ms(percentile(lists, 99))}",
                f"CPU {fmt_ms(at.ws_list_cpu_s)} a request; the first list after creating: {fmt_ms(at.first_list_s)}, "
                f"the next once {RACY_S} s passed: {fmt_ms(at.next_list_s)}",
            ),
            Row(
                f"{n}: aidp ws list",
                fmt_ms(median(cli)),
                f"range {fmt_ms(min(cli))}–{fmt_ms(max(cli))}; CPU {fmt_ms(median(at.cli_list_cpu_s))}",
            ),
        ]
    s.figures = {"curve": [dataclasses.asdict(at) for at in curve]}
    s.notes.append(
        f"One repository, one server; workstreams are created one after another by `aidp/wsNew` (the "
        f"workstream's own worktree and branch, its record). Around each count, {WINDOW} `aidp/wsNew` and "
        f"{WINDOW} `git worktree add -b <branch> <path> HEAD` alternate (the references count as worktrees "
        "too); medians, and the ratio against the first count. Then the list: one `aidp/wsList` right after "
        f"creating (git is asked about every new worktree), one more once {RACY_S} s have passed, then "
        f"{LISTS} more (answered from the server's list snapshot while nothing changed: `aidp.server.snapshot`), "
        "p50 / p99, and the server's CPU "
        f"per request (`/proc/<pid>/stat`, its git children included); and {CLI_LISTS} whole `aidp ws list` "
        "processes (start-up included), median wall and CPU (user + system, children included). On a shared "
        "machine wall times follow the load; CPU is the steadier figure. Load average: the 1-minute figure "
        "at each count."
    )
    return s


LIST_N = 10_000


async def run_list(p: Params) -> list[Section]:
    n = 300 if p.quick else LIST_N
    repo = make_repo(p.work / "list10k", ["true"])
    with Stopwatch() as made:
        await bulk(repo, n)
    # A repository is not made the instant its server starts: inputs this recent cannot be trusted
    # by the snapshot (file times tick coarsely), which would compute the list once more.
    time.sleep(RACY_S)
    client = await start_server(repo, p.work / "server-list10k.log")
    try:
        at = await point(client, repo, n, [], [], LIST10K_LISTS)
        after_set = []
        for i in range(SETS):  # a change by aidp: the next list is computed again, whatever the size
            await client.request("aidp/wsSet", {"slug": f"ws-{i:05d}", "priority": "high"})
            after_set.append((await ws_list(client))[0])
        rss = proc_status(client.pid, "VmRSS")
    finally:
        await client.close()
    shown, full, kept = cli_lists(repo)
    lists, read = at.ws_list_s, at.ws_list_read_s
    s = Section("list10k", f"The list at {n:,} workstreams")
    s.rows = [
        Row(
            "aidp/wsList p50 / p99, nothing changed",
            f"{fmt_ms(median(lists))} / {fmt_ms(percentile(lists, 99))}",
            f"{len(lists)} lists from the server's snapshot, decoded by the client (json.loads); CPU "
            f"{fmt_ms(at.ws_list_cpu_s)} a request; load {at.load:.1f}",
        ),
        Row(
            "aidp/wsList p50 / p99 until the answer was read",
            f"{fmt_ms(median(read))} / {fmt_ms(percentile(read, 99))}",
            "the same lists, until the answer's last byte was read, before the client decoded it",
        ),
        Row("aidp/wsList, the first after making them", fmt_ms(at.first_list_s), "git asked about every worktree"),
        Row(
            "aidp/wsList, the next one",
            fmt_ms(at.next_list_s),
            "once the racy window passed: at this size answered from the snapshot, its worktrees checked in the "
            "background (on the request only while that check is cheap)",
        ),
        Row(
            "aidp/wsList right after an aidp/wsSet",
            fmt_ms(median(after_set)),
            f"median of {SETS}, range {fmt_ms(min(after_set))}–{fmt_ms(max(after_set))}: the whole list computed again",
        ),
        Row("server RSS after the lists", f"{rss / 1e6:.1f} MB"),
        cli_row("aidp ws list, unchanged since the last", kept, f"the table the last list kept (shown: {shown})"),
        cli_row("aidp ws list, the first after a run", full, "the full list (a run changed the state database)"),
    ]
    s.figures = {"point": dataclasses.asdict(at), "after_set_s": after_set, "rss_bytes": rss, "made_s": made.elapsed}
    s.figures |= {"cli_kept": kept, "cli_full": full}
    s.notes.append(
        f"{n:,} workstreams made in bulk in {made.elapsed:.0f} s: the first through `Engine.create`, the others "
        "with its branch (one `git update-ref --stdin` for all), its worktree registered in git's layout "
        "(`gitrepo._register`, as `aidp/wsNew` does) holding a copy of the first one's index, and its record "
        f"(`Store.insert`). Then, on a fresh server: one `aidp/wsList` (git is asked about every worktree); once "
        f"{RACY_S} s have passed, one more and {LIST10K_LISTS} more, answered from the server's list snapshot (at "
        "this size its worktrees are checked in the background, every 2 s at most, by a process of the server's at "
        "idle priority: `aidp.server.snapshot`), "
        "p50 / p99 and the server's CPU per "
        f"request (the client's decoding of each answer included in the times); then {SETS} times an "
        "`aidp/wsSet` of one workstream followed by a list (computed again in full, as after any change aidp "
        f"makes); {CLI_LISTS} whole `aidp ws list` processes, median wall and CPU. Then, the server closed and "
        f"{RACY_S} s later, the console script `{' '.join(script())} ws list` {CLI_LISTS} times each: the first "
        f"after an `aidp ws run` of one workstream (`true`; then {RACY_S} s: the full list, git asked only of "
        "worktrees changed since it last answered, the others' paths stamped as listed after its answer) and "
        "unchanged since (the kept table printed again, "
        "after checking every input of the list, each worktree's files included; 'shown' says the check "
        "before timing found it printed without importing asyncio)."
    )
    return [s]


def cli_lists(repo: Path) -> tuple[bool, list[tuple[float, float]], list[tuple[float, float]]]:
    """`aidp ws list` as users type it, (wall, CPU) of each: the first after a run of one
    workstream (`aidp ws run`, then the racy window waited out) and unchanged since; and whether
    the kept table was the one shown."""
    shown = keep_table(repo)
    full = []
    for i in range(CLI_LISTS):
        sh([*script(), "ws", "run", f"ws-{i:05d}"], cwd=repo)
        time.sleep(RACY_S)
        full.append(sh_cpu([*script(), "ws", "list"], cwd=repo))
    return shown, full, [sh_cpu([*script(), "ws", "list"], cwd=repo) for _ in range(CLI_LISTS)]


def cli_row(what: str, times: list[tuple[float, float]], detail: str) -> Row:
    wall, cpu = [t for t, _ in times], median([c for _, c in times])
    spread = f"range {fmt_ms(min(wall))}–{fmt_ms(max(wall))}; CPU {fmt_ms(cpu)}"
    return Row(what, fmt_ms(median(wall)), f"{detail}; {spread}")


async def bulk(repo: Path, n: int) -> None:
    """`n` workstreams as `aidp/wsNew` leaves them, made without a process per workstream (but the
    first, which is made by the engine and lends the others its index)."""
    await create_workstreams(repo, ["ws-00000"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=ENV, capture_output=True, text=True, check=True)
    commit = head.stdout.strip()
    slugs = [f"ws-{i:05d}" for i in range(1, n)]
    refs = "".join(f"create refs/heads/aidp/{slug} {commit}\n" for slug in slugs)
    subprocess.run(["git", "update-ref", "--stdin"], cwd=repo, env=ENV, input=refs, text=True, check=True)
    common = repo / ".git"
    index = (common / "worktrees" / "ws-00000" / "index").read_bytes()
    store = Store(repo / gitrepo.STATE_DIR / "state.db")
    try:
        for slug in slugs:
            path = repo / gitrepo.WORKTREES_DIR / slug
            admin = gitrepo._register(common, path, f"aidp/{slug}")
            (admin / "index").write_bytes(index)
            (admin / "locked").unlink()
            record = Engine._new_record(slug, f"bench task {slug}", f"aidp/{slug}", path, "main", None, commit)
            store.insert(record)
    finally:
        store.close()
