"""Scenario: workstreams through Ray (`[executor] kind = "ray"`, issue 14) against the local executor.

Two repositories, one per executor, each with its own `aidp serve`; the Ray one uses the Ray
instance aidp starts for itself (empty `[executor] address`: a one-node cluster on 127.0.0.1, the
actors on this machine). Measured: the per-workstream cost of N runs of `true`, 8 at a time
(wall, and CPU of each server's whole process tree), how late output lines reach a client (a
harness printing the wall clock), the first run that starts the Ray instance, the memory of
each server's process tree (the Ray one's includes its Ray processes), and, apart, what starting 8
empty Ray actors at once costs (each is a fresh worker process, as each workstream's actor is).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench.common import Params, Row, Section, alternate, fmt_mb, fmt_ms, fmt_ratio, fmt_s, median, percentile
from bench.fixtures import PYTHON, create_workstreams, make_repo, reset_statuses, start_server
from bench.rpc import RpcClient

CONCURRENCY = 8
STAMPER = Path(__file__).with_name("stamp_harness.py")
STAMPS, STAMP_DELAY_S = 40, 0.05  # lines per latency harness, and the time between them
EXECUTORS = ("local", "ray")


async def run(p: Params) -> list[Section]:
    n = p.ray_n
    slugs = [f"t-{i:03d}" for i in range(n)]
    stampers = [f"stamp-{i}" for i in range(CONCURRENCY)]
    stamp_command = [PYTHON, str(STAMPER), str(STAMPS), str(STAMP_DELAY_S)]
    repos: dict[str, Path] = {}
    for kind in EXECUTORS:
        repos[kind] = make_repo(p.work / f"cluster-{kind}", ["true"], CONCURRENCY)
        with (repos[kind] / ".aidp" / "config.toml").open("a") as config:
            config.write(f'[executor]\nkind = "{kind}"\n')
        await create_workstreams(repos[kind], slugs + stampers, [None] * n + [stamp_command] * CONCURRENCY)
    clients = {kind: await start_server(repo, p.work / f"server-cluster-{kind}.log") for kind, repo in repos.items()}
    try:
        lost: dict[str, list[str]] = {kind: [] for kind in EXECUTORS}  # why runs did not complete
        first = {kind: await _run(client, slugs[:1], lost[kind]) for kind, client in clients.items()}
        idle = {kind: _memory(client.pid) for kind, client in clients.items()}
        cpu: dict[str, list[float]] = {kind: [] for kind in EXECUTORS}
        memory: dict[str, list[dict[str, int]]] = {kind: [] for kind in EXECUTORS}

        def side(kind: str) -> Callable[[], Awaitable[float]]:
            async def timed() -> float:
                pid = clients[kind].pid
                before = _tree_cpu(pid)

                def sample() -> None:
                    memory[kind].append(_memory(pid))

                elapsed = await _run(clients[kind], slugs, lost[kind], during=sample)
                cpu[kind].append(_tree_cpu(pid) - before)
                return elapsed

            return timed

        def reset() -> None:
            for repo in repos.values():
                reset_statuses(repo)

        times = await alternate(p.ray_reps, {kind: side(kind) for kind in EXECUTORS}, between=reset)
        latency = {kind: await _latency(client, stampers, lost[kind]) for kind, client in clients.items()}
    finally:
        for client in clients.values():
            await client.close()
    actors = _empty_actor_starts(p.ray_reps + 1)
    return [_section(p, n, first, idle, memory, times, cpu, latency, actors, lost)]


async def _run(client: RpcClient, slugs: list[str], lost: list[str], during: Callable[[], None] | None = None) -> float:
    """One `aidp/wsRun` of these workstreams, 8 at a time: its wall time, request to answer. Why
    any did not complete goes into `lost` (the figures say how many; the run is not retried).
    `during`: called once while it runs (a memory sample), after half of them ended."""
    halfway = len(slugs) // 2
    ended: list[str] = []

    def count(method: str, params: Any) -> None:
        if method == "aidp/wsStatus" and params["slug"] in slugs and params["status"] == "completed":
            ended.append(params["slug"])
            if during is not None and len(ended) == halfway:
                during()

    client.handlers.append(count)
    try:
        t0 = time.perf_counter()
        summary = await client.request("aidp/wsRun", {"slugs": slugs, "maxConcurrent": CONCURRENCY})
        elapsed = time.perf_counter() - t0
    finally:
        client.handlers.remove(count)
    lost += [f"{r['status']}: {_first_line(r['error'])}" for r in summary["results"] if r["status"] != "completed"]
    return elapsed


def _first_line(error: str | None) -> str:
    """An error's first line without terminal colours or Ray's per-process details (pid, ids)."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", error.splitlines()[0] if error else "")
    return re.sub(r" \(pid=.*", "", line)


async def _latency(client: RpcClient, stampers: list[str], lost: list[str]) -> list[float]:
    """How old each stamped line is when its `aidp/wsOutput` reaches the client (same clock)."""
    partial: dict[str, str] = {}
    ages: list[float] = []

    def receive(method: str, params: Any) -> None:
        if method != "aidp/wsOutput" or params["slug"] not in stampers:
            return
        now = time.time()
        text = partial.get(params["slug"], "") + params["text"]
        *lines, partial[params["slug"]] = text.split("\n")
        ages.extend(now - float(line) for line in lines if line.strip())

    client.handlers.append(receive)
    try:
        await _run(client, stampers, lost)
    finally:
        client.handlers.remove(receive)
    return ages


def _empty_actor_starts(reps: int) -> list[float]:
    """Seconds from asking for 8 actors that do nothing to hearing from all 8, in a Ray instance of
    this process (after aidp's are gone): Ray's own cost of an actor, apart from aidp's work."""
    import ray  # the optional extra, needed here only by this measure

    @ray.remote
    class Empty:
        def ping(self) -> int:
            return 1

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            actors = [Empty.options(num_cpus=0).remote() for _ in range(CONCURRENCY)]  # type: ignore[attr-defined]
            ray.get([actor.ping.remote() for actor in actors])
            times.append(time.perf_counter() - t0)
            for actor in actors:
                ray.kill(actor)
        return times
    finally:
        ray.shutdown()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _tree_cpu(pid: int) -> float:
    """User + system seconds of a server and every process under it, with the children each reaped
    (Ray's processes live on between samples; a harness is reaped by its parent)."""
    total = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _memory(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages divided among their users) of a server's process tree, in bytes,
    and the RSS of each kind of process in it ("rss:<name>")."""
    figures: Counter[str] = Counter()
    for proc in _tree(pid):
        try:
            info = proc.memory_full_info()
            name = proc.name()
        except psutil.NoSuchProcess:
            continue
        figures["rss"] += info.rss
        figures["pss"] += info.pss
        figures["processes"] += 1
        figures[f"rss:{name}"] += info.rss
    return dict(figures)


def _section(
    p: Params,
    n: int,
    first: dict[str, float],
    idle: dict[str, dict[str, int]],
    memory: dict[str, list[dict[str, int]]],
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    latency: dict[str, list[float]],
    actors: list[float],
    lost: dict[str, list[str]],
) -> Section:
    section = Section("ray", f"Ray executor: {n} workstreams running `true`, {CONCURRENCY} at a time, Ray vs local")
    base, base_cpu = median(times["local"]), median(cpu["local"])
    for kind in EXECUTORS:
        m, c = median(times[kind]), median(cpu[kind])
        paired = median([a / b for a, b in zip(times[kind], times["local"], strict=True)])
        detail = f"{fmt_s(m)}; paired {fmt_ratio(paired)}"
        section.rows.append(Row(f"{kind} executor: wall", f"{fmt_ms(m / n)} /ws", detail, fmt_ratio(m / base)))
        section.rows.append(
            Row(f"{kind} executor: CPU", f"{fmt_ms(c / n)} /ws", "server + its process tree", fmt_ratio(c / base_cpu))
        )
    for kind in EXECUTORS:
        ages = latency[kind]
        section.rows.append(
            Row(
                f"{kind} executor: output line to client, p50 / p99",
                f"{percentile(ages, 50) * 1e3:.0f} / {percentile(ages, 99) * 1e3:.0f} ms",
                f"{len(ages)} of {STAMPS * CONCURRENCY} lines, {CONCURRENCY} harnesses at once",
            )
        )
    for kind in EXECUTORS:
        label = "first run of one workstream" + (" (starts aidp's own Ray instance)" if kind == "ray" else "")
        section.rows.append(Row(f"{kind} executor: {label}", fmt_s(first[kind])))
    for kind in EXECUTORS:
        busy, count = median([float(m["rss"]) for m in memory[kind]]), idle[kind]["processes"]
        processes = f"{count} process" + ("" if count == 1 else "es")
        section.rows.append(
            Row(
                f"{kind} executor: memory of the server's process tree",
                f"{fmt_mb(idle[kind]['rss'])} RSS idle",
                f"{fmt_mb(idle[kind]['pss'])} PSS idle, {processes}; {fmt_mb(busy)} RSS with {CONCURRENCY} running",
            )
        )
    runs = n * p.ray_reps + 1 + CONCURRENCY  # the timed runs, the first one, the latency run
    for kind in EXECUTORS:
        reasons = "; ".join(f"{count} × {why}" for why, count in Counter(lost[kind]).most_common()) or "-"
        label = f"{kind} executor: runs that did not complete"
        section.rows.append(Row(label, f"{len(lost[kind])} of {runs}", reasons))
    section.rows.append(
        Row(
            f"{CONCURRENCY} empty Ray actors started at once",
            fmt_s(median(actors)),
            f"{fmt_ms(median(actors) / CONCURRENCY)} per actor; {len(actors)} repetitions",
        )
    )
    heavy = sorted(((v, k[4:]) for k, v in idle["ray"].items() if k.startswith("rss:")), reverse=True)[:6]
    section.figures = {
        "n": n,
        "times_s": times,
        "cpu_s": cpu,
        "first_s": first,
        "idle_memory": idle,
        "busy_memory": memory,
        "latency_s": latency,
        "empty_actors_s": actors,
        "lost": lost,
    }
    section.notes.append(
        "Both sides go through a running `aidp serve` (`aidp/wsRun` of the same N workstreams, request to answer), "
        'each in its own repository; the Ray side has `[executor] kind = "ray"` with an empty `address`, so '
        "aidp starts a Ray instance of its own (its node on 127.0.0.1) at its first run (a one-node cluster: "
        "the actors run on this machine, so this measures what Ray adds, not a network). Per workstream, the Ray "
        "side creates "
        "an actor, ships the branch as a git bundle through the object store, clones it there, runs the harness, "
        "streams its output back and brings back a bundle of new commits (none here). CPU is user + system time "
        "of the server and every process under it (Ray's included), with what each reaped. "
        f"{p.ray_reps} repetitions, order rotated, medians; ratio against the local executor; *paired* = the "
        "median of per-repetition ratios."
    )
    section.notes.append(
        f"Output latency: {CONCURRENCY} harnesses at once, each printing the wall clock {STAMPS} times "
        f"{STAMP_DELAY_S * 1e3:.0f} ms apart; a line's age is the client's clock when the `aidp/wsOutput` "
        "notification holding it was read, minus the stamp (same machine, same clock). Memory: RSS (and PSS, "
        "which divides shared pages among their users) of the server and every process under it, after the "
        "first run (idle) and halfway through a timed run; the largest processes of the Ray side, idle "
        "(`python` is the aidp server itself, with Ray's driver loaded): "
        + ", ".join(f"{name} {fmt_mb(rss)}" for rss, name in heavy)
        + "."
    )
    per_ws, held = median(times["ray"]) / n, median(times["ray"]) / n * CONCURRENCY
    section.notes.append(
        f"Where the time goes: a workstream costs {fmt_ms(per_ws)} through Ray against "
        f"{fmt_ms(median(times['local']) / n)} locally, so each one holds its slot for about {fmt_s(held)}, "
        f"while the Ray side's whole process tree spends {fmt_ms(median(cpu['ray']) / n)} of CPU on it: most of "
        f"the time is waiting, not work. {CONCURRENCY} actors that do nothing take {fmt_s(median(actors))} to "
        f"start at once, {median(actors) / held:.0%} of that: each actor is a Ray worker process of its own; "
        "the rest is the git bundle there, the clone, the stream of output and the end. An actor per workstream "
        "(so that nothing ever runs twice, and a cancel or a lost node ends exactly one harness) is the price; "
        "it matters for many short workstreams, not for agents that run for minutes."
    )
    return section
