"""Scenarios 3 and 4: output floods.

3. One workstream `cat`s a 200 MB file as fast as it can while a client reads the notifications:
   throughput against plain `cat` into a file, the server's peak memory, and that the log keeps
   every byte.
4. `aidp/wsList` latency while 8 workstreams flood, against the same server idle.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

from bench.common import (
    Params,
    Row,
    Section,
    Stopwatch,
    alternate,
    fmt_mb,
    fmt_ms,
    fmt_ratio,
    median,
    percentile,
)
from bench.fixtures import create_workstreams, make_repo, proc_status, process_cpu, reset_statuses, sh, start_server

FLOODERS = 8
FLOOD_LINE = "aidp bench flood line: the quick brown fox jumps over the lazy dog"
SKIP_MARK = "bytes of output skipped"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def run(p: Params) -> list[Section]:
    return [await measure_flood(p), await measure_responsiveness(p)]


async def measure_flood(p: Params) -> Section:
    source = p.work / "flood-source.bin"
    sh(["sh", "-c", f'head -c {p.flood_bytes} /dev/urandom > "$1"', "sh", str(source)])
    expected = sha256(source)
    repo = make_repo(p.work / "flood", ["cat", str(source)])
    await create_workstreams(repo, ["flood"])
    facts: list[dict[str, Any]] = []

    async def aidp() -> float:
        """A fresh server per repetition, so VmHWM is this run's peak (start-up included)."""
        client = await start_server(repo, p.work / "server-flood.log")
        skips = 0

        def count_skips(method: str, params: Any) -> None:
            nonlocal skips
            if method == "aidp/wsOutput":
                skips += params["text"].count(SKIP_MARK)

        client.handlers.append(count_skips)
        idle = proc_status(client.pid, "VmRSS")
        with Stopwatch() as watch:
            summary = await client.request("aidp/wsRun", {"slugs": ["flood"]})
        peak = proc_status(client.pid, "VmHWM")
        await asyncio.sleep(0.3)  # let the last output notifications arrive before counting
        log = Path(summary["results"][0]["logPath"])
        facts.append(
            {
                "idle_rss": idle,
                "peak_rss": peak,
                "log_intact": log.stat().st_size == p.flood_bytes and sha256(log) == expected,
                "streamed_bytes": client.output_bytes,
                "skip_notes": skips,
                "status": summary["results"][0]["status"],
            }
        )
        log.unlink()
        await client.close()
        return watch.elapsed

    async def cat() -> float:
        out = p.work / "cat-copy.bin"  # appended to, as aidp opens its logs: O_APPEND rules out copy_file_range
        elapsed = sh(["sh", "-c", 'cat "$1" >> "$2"', "sh", str(source), str(out)])
        out.unlink()
        return elapsed

    sides = {"aidp (cat SOURCE as harness)": aidp, "cat SOURCE >> file": cat}
    times = await alternate(p.flood_reps, sides, warmup=True)
    intact = all(f["log_intact"] for f in facts)  # the warm-up's log must be intact too
    facts = facts[1:]

    source.unlink()

    mb = p.flood_bytes / 1e6
    section = Section("flood", f"Output flood: one workstream writing {fmt_mb(p.flood_bytes)}")
    base = median(times["cat SOURCE >> file"])
    for name, values in times.items():
        m = median(values)
        section.rows.append(Row(f"{name}: throughput", f"{mb / m:.0f} MB/s", f"{m:.2f} s", fmt_ratio(m / base)))
    idle = median([float(f["idle_rss"]) for f in facts])
    peak = max(float(f["peak_rss"]) for f in facts)
    section.rows.append(Row("server RSS idle / peak (VmHWM)", f"{fmt_mb(idle)} / {fmt_mb(peak)}"))
    section.rows.append(Row("log sha256 == source sha256", "yes, every run" if intact else "NO"))
    streamed = median([float(f["streamed_bytes"]) for f in facts])
    section.rows.append(Row("live output the client received", fmt_mb(streamed)))
    section.figures = {"bytes": p.flood_bytes, "times_s": times, "runs": facts}
    section.notes.append(
        f"The source is {fmt_mb(p.flood_bytes)} of `/dev/urandom`, written once; the workstream's harness is "
        "`cat SOURCE`, so the child writes straight into its log file and the server only tails it for the "
        "live view. The reference is `sh -c 'cat SOURCE >> file'` into a fresh file (appending, as aidp "
        "opens its logs; with `>` GNU cat would use `copy_file_range`, which an `O_APPEND` log cannot). "
        "One untimed warm-up run of each side first. aidp's time is the `aidp/wsRun` request "
        "to its answer on a server started fresh for each repetition (so `VmHWM`, the kernel's peak RSS, "
        "is that run's peak; it includes the server's own start-up). A client is connected and reads every "
        "notification. After each run the log's sha256 is compared with the source's. The live stream is a "
        f"view: it carried a median {fmt_mb(streamed)} and said where it skipped (skip notices per run: "
        f"{median([float(f['skip_notes']) for f in facts]):.0f}). Both sides write into the page cache "
        "(the files fit in memory many times over), so this measures the copy and aidp's share of it, "
        "not the disk; a flood this fast is over within a tick or two of the live view, and the "
        f"responsiveness scenario below keeps {FLOODERS} floods going for seconds. "
        f"{p.flood_reps} repetitions, medians; ratio = time against plain `cat`."
    )
    return section


async def measure_responsiveness(p: Params) -> Section:
    command = ["sh", "-c", f"yes '{FLOOD_LINE}' | head -c {p.busy_bytes}"]
    repo = make_repo(p.work / "busy", command, max_concurrent=FLOODERS)
    await create_workstreams(repo, [f"flood-{i}" for i in range(FLOODERS)])
    client = await start_server(repo, p.work / "server-busy.log")
    running = asyncio.Event()
    started: set[str] = set()

    def watch_running(method: str, params: Any) -> None:
        if method == "aidp/wsStatus" and params["status"] == "running":
            started.add(params["slug"])
            if len(started) == FLOODERS:
                running.set()

    client.handlers.append(watch_running)

    async def list_latency() -> float:
        with Stopwatch() as watch:
            await client.request("aidp/wsList", {})
        return watch.elapsed

    idle: list[float] = []
    busy: list[float] = []
    flood_s: list[float] = []
    server_cpu: list[float] = []
    for _ in range(p.busy_reps):
        idle += [await list_latency() for _ in range(p.idle_samples)]
        reset_statuses(repo)
        shutil.rmtree(repo / ".aidp" / "logs", ignore_errors=True)
        started.clear()
        running.clear()
        cpu_before = process_cpu(client.pid, children=False)
        with Stopwatch() as watch:
            run = asyncio.create_task(client.request("aidp/wsRunAll", {}))
            await running.wait()
            while not run.done():
                busy.append(await list_latency())
            summary = await run
        assert summary["completed"] == FLOODERS, summary
        flood_s.append(watch.elapsed)
        server_cpu.append(process_cpu(client.pid, children=False) - cpu_before)
    await client.close()
    shutil.rmtree(repo / ".aidp" / "logs", ignore_errors=True)

    section = Section("responsiveness", f"Responsiveness: `aidp/wsList` while {FLOODERS} workstreams flood")
    for name, values in (("idle server", idle), (f"{FLOODERS} floods running", busy)):
        section.rows.append(
            Row(
                f"wsList {name}: p50 / p99",
                f"{fmt_ms(percentile(values, 50))} / {fmt_ms(percentile(values, 99))}",
                f"{len(values)} requests",
                fmt_ratio(percentile(values, 50) / percentile(idle, 50)),
            )
        )
    section.rows.append(Row("wsList 8 floods running: max", fmt_ms(max(busy))))
    share = median([c / s for c, s in zip(server_cpu, flood_s, strict=True)])
    section.rows.append(Row("server's own CPU while flooded, answering wsList", f"{share * 100:.0f}% of one core"))
    section.figures = {"idle_s": idle, "busy_s": busy, "flood_run_s": flood_s, "server_cpu_s": server_cpu}
    total = FLOODERS * p.busy_bytes
    section.notes.append(
        f"{FLOODERS} workstreams each run `yes '<a 66-byte line>' | head -c {p.busy_bytes}` at once "
        f"({fmt_mb(total)} in all, {median(flood_s):.1f} s per flood run); {FLOODERS * 2} busy processes share "
        "the 2 cores with the server. Requests go one after another from the moment all floods are "
        "`running` until the run answers; the idle figures come from the same server between floods "
        f"({p.idle_samples} requests per repetition). {p.busy_reps} repetitions, samples pooled; "
        "ratio = p50 against idle p50."
    )
    return section
