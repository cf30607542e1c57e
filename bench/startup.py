"""Scenario 6: start-up. How long an editor waits for `aidp serve` to answer `initialize` (and then
its first `aidp/wsList`), and a user for `aidp ws list`; the bare interpreter start is the floor.

The breakdown times, side by side in each repetition, what the server does in turn: the
interpreter starting (`python -c pass`), the imports `initialize` needs (the CLI's parser and
`aidp.server.lifecycle`), `initialize` answered, the imports the rest needs (pygls, lsprotocol, the
engine) and the first `aidp/wsList` answered (the repository opened and listed).

`aidp ws list` is timed as users type it, the console script `.venv/bin/aidp` (`python -m aidp` adds
runpy, about 7 ms), in two cases: unchanged since the last list (the table that list kept is printed
again, `aidp.cli.fastlist`) and the first list after a change (the full list: the kept table is
removed before each run, which is what any change to aidp's state, git's refs or a worktree does to
it; the dirty cache stays warm, as after most changes)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from aidp.cli import fastlist
from aidp.engine.dirty import RACY_NS
from bench.common import Params, Row, Section, Side, Stopwatch, alternate, fmt_ms, fmt_ratio, median
from bench.fixtures import ENV, PYTHON, aidp_cli, create_workstreams, make_repo, process_cpu, serve_argv, sh_cpu
from bench.rpc import RpcClient

LISTED = 100  # the workstreams of the server's repository
FEW = 3  # the workstreams of the tiny repository `aidp ws list` is timed in (issue 13: "few")
BARE = "python -c pass"
SERVE = "aidp serve → initialize answered"
FIRST_LIST = "aidp serve → first aidp/wsList answered"
SCRIPT = Path(PYTHON).with_name("aidp")  # the console script users type
INITIALIZE_IMPORTS = "import aidp.cli.main, aidp.server.lifecycle"
SERVER_IMPORTS = "import aidp.cli.main, aidp.server.app"


async def run(p: Params) -> list[Section]:
    repo = make_repo(p.work / "startup", ["true"])
    await create_workstreams(repo, [f"ws-{i:03d}" for i in range(LISTED)])
    tiny = make_repo(p.work / "startup-tiny", ["true"])
    await create_workstreams(tiny, [f"ws-{i}" for i in range(FEW)])
    argv = serve_argv(repo)
    kept = {str(where.name): keep_table(where) for where in (tiny, repo)}
    first_list: list[float] = []
    cpu: dict[str, list[float]] = {}  # CPU seconds of each side: steadier than wall time on a loaded machine

    async def serve() -> float:
        """Spawn to `initialize` answered (returned); spawn to the first `aidp/wsList` (kept aside)."""
        with Stopwatch() as watch:
            client = await RpcClient.spawn(argv, repo, p.work / "server-startup.log", ENV)
            await client.initialize(repo)
        answered = watch.elapsed
        cpu.setdefault(SERVE, []).append(process_cpu(client.pid, children=False))
        with Stopwatch() as listed:
            await client.request("aidp/wsList", {})
        first_list.append(answered + listed.elapsed)
        cpu.setdefault(FIRST_LIST, []).append(process_cpu(client.pid))
        await client.close()
        return answered

    def process(name: str, cmd: list[str], cwd: Path | None = None, full: bool = False) -> tuple[str, Side]:
        """A side running `cmd`; `full`: `aidp ws list` with the kept table removed first."""

        async def side() -> float:
            if full and cwd is not None:
                (cwd / ".aidp" / fastlist.CACHE_FILE).unlink(missing_ok=True)
            wall, used = sh_cpu(cmd, cwd=cwd)
            cpu.setdefault(name, []).append(used)
            return wall

        return name, side

    sides: dict[str, Side] = dict(
        [
            process(BARE, [PYTHON, "-c", "pass"]),
            process("imports `initialize` needs", [PYTHON, "-c", INITIALIZE_IMPORTS]),
            (SERVE, serve),
            process("imports of the whole server", [PYTHON, "-c", SERVER_IMPORTS]),
            process(f"aidp ws list ({FEW} workstreams), unchanged since the last", [*script(), "ws", "list"], tiny),
            process(f"aidp ws list ({FEW}), first after a change", [*script(), "ws", "list"], tiny, full=True),
            process(f"aidp ws list ({LISTED}), unchanged since the last", [*script(), "ws", "list"], repo),
            process(f"aidp ws list ({LISTED}), first after a change", [*script(), "ws", "list"], repo, full=True),
        ]
    )
    times = await alternate(p.startup_reps, sides)
    times[FIRST_LIST] = first_list
    base, base_cpu = median(times[BARE]), median(cpu[BARE])
    section = Section("startup", "Start-up")
    for name, values in times.items():
        m, used = median(values), median(cpu[name])
        detail = (
            f"min {fmt_ms(min(values))}, max {fmt_ms(max(values))}; CPU {fmt_ms(used)} ({fmt_ratio(used / base_cpu)})"
        )
        section.rows.append(Row(name, fmt_ms(m), detail, fmt_ratio(m / base)))
    section.figures = {"times_s": times, "cpu_s": cpu}
    section.notes.append(
        "`aidp serve`: from spawning `python -m aidp serve` to the answer to `initialize`, then to the "
        f"answer to the first `aidp/wsList` (the repository opened, {LISTED} workstreams listed with their "
        "changes). The imports rows are whole processes importing what each stage needs: "
        f"`{INITIALIZE_IMPORTS}` (the server answers `initialize` with no more loaded) and "
        f"`{SERVER_IMPORTS}` (pygls, lsprotocol, the engine; imported after that answer). "
        f"`aidp ws list`: the whole CLI process `{' '.join(script())} ws list`, in a repository with {FEW} "
        f"and with {LISTED} workstreams: unchanged since the last list (the kept table printed again; "
        f"checked before timing, printed without importing asyncio: {kept}) and the first list after a "
        "change (the full list, the kept table removed before each run; git asked only of worktrees "
        "changed since it last answered). `python -c pass` (same venv interpreter) is the floor. "
        f"{p.startup_reps} repetitions, order rotated, medians; ratio = wall time against `python -c pass`. "
        "CPU = user + system seconds of the process (for the server: read from `/proc` as the answer "
        "arrives, so a few milliseconds of what follows may be in it; 10 ms ticks), against the CPU of "
        "`python -c pass`: on a machine this loaded the steadier comparison."
    )
    return [section]


def script() -> list[str]:
    """The console script users type (`python -m aidp` where it is not installed)."""
    return [str(SCRIPT)] if SCRIPT.exists() else aidp_cli()


def keep_table(repo: Path) -> bool:
    """Wait out the racy window since the repository was made (a list keeps nothing changed within
    it), list once to keep the table, and say whether the next list printed it: it imports no
    asyncio then."""
    time.sleep(RACY_NS / 1e9 + 0.2)
    sh_cpu([*script(), "ws", "list"], cwd=repo)
    env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([*script(), "ws", "list"], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return not any(line.split("|")[-1].strip() == "asyncio" for line in done.stderr.splitlines())
