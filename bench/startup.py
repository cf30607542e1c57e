"""Scenario 6: start-up. How long an editor waits for `aidp serve` to answer `initialize` (and then
its first `aidp/wsList`), and a user for `aidp ws list`; the bare interpreter start is the floor.

The breakdown times, side by side in each repetition, what the server does in turn: the
interpreter starting (`python -c pass`), the imports `initialize` needs (the CLI's parser and
`aidp.server.lifecycle`), `initialize` answered, the imports the rest needs (pygls, lsprotocol, the
engine) and the first `aidp/wsList` answered (the repository opened and listed)."""

from __future__ import annotations

from pathlib import Path

from bench.common import Params, Row, Section, Side, Stopwatch, alternate, fmt_ms, fmt_ratio, median
from bench.fixtures import ENV, PYTHON, aidp_cli, create_workstreams, make_repo, serve_argv, sh
from bench.rpc import RpcClient

LISTED = 100  # the workstreams of the server's repository
FEW = 3  # the workstreams of the tiny repository `aidp ws list` is timed in (issue 13: "few")
INITIALIZE_IMPORTS = "import aidp.cli.main, aidp.server.lifecycle"
SERVER_IMPORTS = "import aidp.cli.main, aidp.server.app"


async def run(p: Params) -> list[Section]:
    repo = make_repo(p.work / "startup", ["true"])
    await create_workstreams(repo, [f"ws-{i:03d}" for i in range(LISTED)])
    tiny = make_repo(p.work / "startup-tiny", ["true"])
    await create_workstreams(tiny, [f"ws-{i}" for i in range(FEW)])
    argv = serve_argv(repo)
    first_list: list[float] = []

    async def serve() -> float:
        """Spawn to `initialize` answered (returned); spawn to the first `aidp/wsList` (kept aside)."""
        with Stopwatch() as watch:
            client = await RpcClient.spawn(argv, repo, p.work / "server-startup.log", ENV)
            await client.initialize(repo)
        answered = watch.elapsed
        with Stopwatch() as listed:
            await client.request("aidp/wsList", {})
        first_list.append(answered + listed.elapsed)
        await client.close()
        return answered

    def process(cmd: list[str], cwd: Path | None = None) -> Side:
        async def side() -> float:
            return sh(cmd, cwd=cwd)

        return side

    sides: dict[str, Side] = {
        "python -c pass": process([PYTHON, "-c", "pass"]),
        "imports `initialize` needs": process([PYTHON, "-c", INITIALIZE_IMPORTS]),
        "aidp serve → initialize answered": serve,
        "imports of the whole server": process([PYTHON, "-c", SERVER_IMPORTS]),
        f"aidp ws list ({FEW} workstreams)": process([*aidp_cli(), "ws", "list"], tiny),
        f"aidp ws list ({LISTED} workstreams)": process([*aidp_cli(), "ws", "list"], repo),
    }
    times = await alternate(p.startup_reps, sides)
    times["aidp serve → first aidp/wsList answered"] = first_list
    base = median(times["python -c pass"])
    section = Section("startup", "Start-up")
    for name, values in times.items():
        m = median(values)
        spread = f"min {fmt_ms(min(values))}, max {fmt_ms(max(values))}"
        section.rows.append(Row(name, fmt_ms(m), spread, fmt_ratio(m / base)))
    section.figures = {"times_s": times}
    section.notes.append(
        "`aidp serve`: from spawning `python -m aidp serve` to the answer to `initialize`, then to the "
        f"answer to the first `aidp/wsList` (the repository opened, {LISTED} workstreams listed with their "
        "changes). The imports rows are whole processes importing what each stage needs: "
        f"`{INITIALIZE_IMPORTS}` (the server answers `initialize` with no more loaded) and "
        f"`{SERVER_IMPORTS}` (pygls, lsprotocol, the engine; imported after that answer). "
        f"`aidp ws list`: the whole CLI process, in a repository with {FEW} and with {LISTED} workstreams "
        "(the CHANGES column runs git for each). `python -c pass` (same venv interpreter) is the floor. "
        f"{p.startup_reps} repetitions, order rotated, medians; ratio = against `python -c pass`."
    )
    return [section]
