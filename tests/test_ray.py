"""The executor's backends, local and Ray, through the faces users touch (`aidp ws run`, `aidp
serve`): the same suite for both (exit codes, output complete and in order, cancel of a tree,
timeout, commits back on the branch), and what only a cluster has (the local branch moved
meanwhile, a placement that cannot be satisfied, a worker node that dies mid-run).

One real Ray cluster serves the whole session (`ray_helpers.Cluster`: a head and a worker node on
a loopback address, started once: Ray takes seconds to start and about 2 GB)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_helpers import spawn_cli, wait_for
from ray_helpers import Cluster
from server_helpers import initialize_params as init_params
from server_helpers import lsp_session, server_command
from support import PYTHON, WAIT_S, cli, git, make_repo, marked, wait_until, wait_until_sync

SLOTS = 4


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("ray", numbered=True))
    try:
        cluster.start(SLOTS)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["local", "ray"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def configure(repo: Path, kind: str, cluster: Cluster | None, extra: str = "") -> dict[str, str]:
    """`[executor]` for `kind`; returns the environment aidp needs for it (the cluster's token)."""
    state = repo / ".aidp"
    state.mkdir(exist_ok=True)
    text = f'[executor]\nkind = "{kind}"\n'
    if kind == "ray":
        assert cluster is not None
        text += f'address = "{cluster.address}"\nplacement_timeout_s = 120\n'
    (state / "config.toml").write_text(text + extra)
    return cluster.env if kind == "ray" and cluster is not None else {}


@pytest.fixture
def repo_env(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    """A repository configured for the backend; the cluster is started only for "ray"."""
    cluster = request.getfixturevalue("ray_cluster") if backend == "ray" else None
    repo = make_repo(tmp_path)
    return repo, configure(repo, backend, cluster)


def harness(tmp_path: Path, name: str, code: str) -> str:
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return shlex.join([PYTHON, str(script), "{slug}"])


def new_ws(repo: Path, slug: str, command: str, env: dict[str, str]) -> None:
    result = cli(repo, "ws", "new", slug, f"task of {slug}", "--command", command, env=env)
    assert result.returncode == 0, result.stderr


def run_json(repo: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    result = cli(repo, "ws", "run", "--json", *args, env=env, timeout=WAIT_S * 3)
    assert result.stdout, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def results(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["slug"]: r for r in summary["results"]}


def ended(run: subprocess.Popen[str], slug: str) -> tuple[dict[str, Any], str]:
    """The result of `slug` once the `ws run --json` process `run` has ended, and what it said on stderr."""
    out, err = run.communicate(timeout=WAIT_S * 2)
    return results(json.loads(out))[slug], err


# -- the same suite for both backends ---------------------------------------------------------------


def test_exit_codes_and_host(repo_env: tuple[Path, dict[str, str]], tmp_path: Path, backend: str) -> None:
    repo, env = repo_env
    new_ws(repo, "ok", harness(tmp_path, "ok", "print('fine')\n"), env)
    new_ws(repo, "bad", harness(tmp_path, "bad", "import sys\nprint('about to fail')\nsys.exit(3)\n"), env)
    summary = run_json(repo, env, "ok", "bad")
    got = results(summary)
    assert (got["ok"]["status"], got["ok"]["exitCode"]) == ("completed", 0)
    assert (got["bad"]["status"], got["bad"]["exitCode"]) == ("failed", 3)
    assert "about to fail" in got["bad"]["error"]
    if backend == "ray":
        assert got["ok"]["host"] == os.uname().nodename  # the cluster runs on this machine
    else:
        assert got["ok"].get("host") is None


def test_output_complete_and_in_order(repo_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Every byte the harness printed is in the log, in order (checked by sha256), also a burst far
    larger than one chunk, and text that is not valid UTF-8."""
    repo, env = repo_env
    expected = tmp_path / "expected.sha256"
    code = (
        "import hashlib, sys, time\n"
        "out = bytearray()\n"
        "for i in range(3000):\n"
        "    line = f'line {i:05d} ' .encode() + b'x' * (i % 200) + b'\\n'\n"
        "    out += line\n"
        "    sys.stdout.buffer.write(line)\n"
        "    if i % 500 == 0:\n"
        "        sys.stdout.flush(); time.sleep(0.05)\n"
        "tail = b'\\xff\\xfe not utf-8\\n'\n"
        "out += tail\n"
        "sys.stdout.buffer.write(tail)\n"
        "sys.stdout.flush()\n"
        f"open({str(expected)!r}, 'w').write(hashlib.sha256(out).hexdigest())\n"
    )
    new_ws(repo, "talk", harness(tmp_path, "talk", code), env)
    got = results(run_json(repo, env, "talk"))["talk"]
    assert got["status"] == "completed", got
    data = Path(got["logPath"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected.read_text()
    numbers = [int(line.split()[1]) for line in data.splitlines() if line.startswith(b"line ")]
    assert numbers == list(range(3000))


def test_progress_reports_reach_every_viewer(repo_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A progress report the harness writes to $AIDP_PROGRESS shows in `ws list` while it runs."""
    repo, env = repo_env
    gate = tmp_path / "gate"
    code = (
        "import json, os, pathlib, time\n"
        "with open(os.environ['AIDP_PROGRESS'], 'a') as f:\n"
        "    f.write(json.dumps({'percent': 40, 'message': 'on its way'}) + '\\n')\n" + wait_for(gate)
    )
    new_ws(repo, "busy", harness(tmp_path, "busy", code), env)
    run = spawn_cli(repo, "ws", "run", "--json", "busy", env=env)
    try:

        def progress() -> Any:
            listed = cli(repo, "ws", "list", "--json", env=env)
            current = {ws["slug"]: ws for ws in json.loads(listed.stdout)}["busy"]["currentRun"]
            return current and current["progress"]

        wait_until_sync(lambda: bool(progress()), timeout=WAIT_S * 2, what="the progress report")
        assert progress() == {"percent": 40, "step": None, "message": "on its way"}
        gate.touch()
        got, err = ended(run, "busy")
    finally:
        if run.poll() is None:
            run.kill()
    assert got["status"] == "completed", err


def tree_code(pids: Path, marker: str) -> str:
    """A harness that starts a child and a grandchild in a session of its own, records their pids,
    then waits (all three carry `marker` in their argv)."""
    return (
        "import os, subprocess, sys, time\n"
        f"marker = {marker!r}\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', marker]\n"
        "child = subprocess.Popen(sleeper)\n"
        "grandchild = subprocess.Popen(sleeper, start_new_session=True)\n"
        f"open({str(pids)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{child.pid}} {{grandchild.pid}}')\n"
        f"os.rename({str(pids)!r} + '.tmp', {str(pids)!r})\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )


def test_cancel_ends_the_whole_tree(repo_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    repo, env = repo_env
    pids, marker = tmp_path / "pids", f"aidp-test-{uuid.uuid4().hex}"
    command = shlex.join([PYTHON, str(tmp_path / "tree.py"), marker])
    (tmp_path / "tree.py").write_text(tree_code(pids, marker))
    new_ws(repo, "tree", command, env)
    run = spawn_cli(repo, "ws", "run", "--json", "tree", env=env)
    try:
        wait_until_sync(pids.exists, timeout=WAIT_S * 2, what="the harness's tree to start")
        started = [int(p) for p in pids.read_text().split()]
        assert all(psutil.pid_exists(p) for p in started)
        cancel = cli(repo, "ws", "cancel", "tree", env=env)
        assert cancel.returncode == 0, cancel.stderr
        got, err = ended(run, "tree")
    finally:
        if run.poll() is None:
            run.kill()
    assert got["status"] == "cancelled", (got, err)
    assert marked(marker) == []


def test_timeout_ends_it_failed(repo_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    repo, env = repo_env
    marker = f"aidp-test-{uuid.uuid4().hex}"
    command = shlex.join([PYTHON, "-c", "import time; print('waiting', flush=True); time.sleep(600)", marker])
    new_ws(repo, "slow", command, env)
    got = results(run_json(repo, env, "--timeout", "2", "slow"))["slow"]
    assert got["status"] == "failed"
    assert got["error"].startswith("timed out after 2 s")
    assert "waiting" in Path(got["logPath"]).read_text()
    assert marked(marker) == []


def test_commits_come_back_on_the_branch(repo_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A commit of the harness's own and its uncommitted work (auto-committed) end up on
    aidp/<slug> and in the local worktree."""
    repo, env = repo_env
    (repo / ".aidp" / "config.toml").write_text(
        (repo / ".aidp" / "config.toml").read_text() + '[harness]\ncommit = "always"\n'
    )
    code = (
        "import subprocess\n"
        "open('made.txt', 'w').write('made\\n')\n"
        "subprocess.run(['git', 'add', 'made.txt'], check=True)\n"
        "subprocess.run(['git', '-c', 'user.name=h', '-c', 'user.email=h@x', 'commit', '-qm', 'made'], check=True)\n"
        "open('left.txt', 'w').write('left\\n')\n"
    )
    new_ws(repo, "maker", harness(tmp_path, "maker", code), env)
    before = git(repo, "rev-parse", "aidp/maker").strip()
    got = results(run_json(repo, env, "maker"))["maker"]
    assert got["status"] == "completed", got
    subjects = git(repo, "log", "--format=%s", f"{before}..aidp/maker").splitlines()
    assert subjects == ["maker: task of maker", "made"]
    worktree = repo / ".worktrees" / "maker"
    assert (worktree / "made.txt").read_text() == "made\n"
    assert (worktree / "left.txt").read_text() == "left\n"
    assert git(worktree, "status", "--porcelain") == ""


# -- what only a cluster has ------------------------------------------------------------------------


@pytest.fixture
def cluster_repo(tmp_path: Path, ray_cluster: Cluster) -> tuple[Path, dict[str, str]]:
    repo = make_repo(tmp_path)
    return repo, configure(repo, "ray", ray_cluster)


def test_local_branch_moved_meanwhile_is_refused(cluster_repo: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    repo, env = cluster_repo
    gate = tmp_path / "gate"
    code = (
        "import pathlib, subprocess, time\n"
        "print('started', flush=True)\n" + wait_for(gate) + "open('remote.txt', 'w').write('remote\\n')\n"
        "subprocess.run(['git', 'add', 'remote.txt'], check=True)\n"
        "subprocess.run(['git', '-c', 'user.name=h', '-c', 'user.email=h@x', 'commit', '-qm', 'remote'], check=True)\n"
    )
    new_ws(repo, "moved", harness(tmp_path, "moved", code), env)
    run = spawn_cli(repo, "ws", "run", "--json", "moved", env=env)
    worktree = repo / ".worktrees" / "moved"
    try:
        wait_until_sync(lambda: "running" in _status(repo, "moved", env), timeout=WAIT_S * 2, what="running")
        (worktree / "local.txt").write_text("local\n")
        git(worktree, "add", "local.txt")
        git(worktree, "commit", "-qm", "local")
        local = git(repo, "rev-parse", "aidp/moved").strip()
        gate.touch()
        got, err = ended(run, "moved")
    finally:
        if run.poll() is None:
            run.kill()
    assert got["status"] == "error", (got, err)
    assert "moved during the run" in got["error"]
    assert git(repo, "rev-parse", "aidp/moved").strip() == local  # nothing overwritten
    kept = Path(got["logPath"]).with_suffix(".bundle")
    assert str(kept) in got["error"] and kept.is_file()


def _status(repo: Path, slug: str, env: dict[str, str]) -> str:
    listed = cli(repo, "ws", "list", "--json", env=env)
    return str({ws["slug"]: ws for ws in json.loads(listed.stdout)}[slug]["status"])


def test_placement_that_cannot_be_satisfied_ends_error(
    cluster_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """While no node offers what a workstream asks for it stays queued, saying so; after
    `placement_timeout_s` it ends `error`, naming the resource no node has."""
    repo, env = cluster_repo
    config = repo / ".aidp" / "config.toml"
    text = config.read_text().replace("placement_timeout_s = 120", "placement_timeout_s = 15")
    config.write_text(text + "resources = { aidp_test_gpu = 1 }\n")
    new_ws(repo, "nowhere", harness(tmp_path, "nowhere", "print('never')\n"), env)
    run = spawn_cli(repo, "ws", "run", "--json", "nowhere", env=env)
    try:

        def waiting() -> str | None:
            listed = cli(repo, "ws", "list", "--json", env=env)
            current = {ws["slug"]: ws for ws in json.loads(listed.stdout)}["nowhere"]["currentRun"]
            return current["waiting"] if current else None

        wait_until_sync(lambda: (waiting() or "").startswith("waiting for a Ray node"), what="the wait said")
        assert "aidp_test_gpu 1" in (waiting() or "")
        got, err = ended(run, "nowhere")
    finally:
        if run.poll() is None:
            run.kill()
    assert got["status"] == "error", (got, err)
    assert "aidp_test_gpu 1" in got["error"] and "no node of the cluster has it" in got["error"]
    assert "never" not in Path(got["logPath"]).read_text()


def test_cpu_in_resources_is_asked_of_ray_as_cpus(cluster_repo: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """`resources = { CPU = 1 }` is what the config reference suggests: Ray takes CPU only as
    `num_cpus`, so the actor must ask for it that way, and the run completes."""
    repo, env = cluster_repo
    config = repo / ".aidp" / "config.toml"
    config.write_text(config.read_text() + "resources = { CPU = 1 }\n")
    new_ws(repo, "one-cpu", harness(tmp_path, "one-cpu", "print('on a cpu')\n"), env)
    got = results(run_json(repo, env, "one-cpu"))["one-cpu"]
    assert got["status"] == "completed", got
    assert "on a cpu" in Path(got["logPath"]).read_text()


def test_worker_node_killed_mid_run_fails_it_and_leaves_nothing(ray_cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL of the raylet of the node running the harness: `failed`, "remote worker lost",
    and the harness's whole tree is gone (the watchdog), not only the actor."""
    node = ray_cluster.add_node("doomed", {"aidp_doomed": 1})
    extra = 'slot_resource = "aidp_doomed"\nheartbeat_timeout_s = 30\n'
    got = lose_a_running_tree(
        ray_cluster, tmp_path, extra, lambda _: ray_cluster.raylet_of(node).send_signal(signal.SIGKILL)
    )
    assert got["error"].startswith("remote worker lost: ")


def lose_a_running_tree(
    ray_cluster: Cluster, tmp_path: Path, executor_config: str, lose: Callable[[Path], None]
) -> dict[str, Any]:
    """Run a tree of marked processes on the cluster (`executor_config` added to [executor]), call
    `lose(pids)` once it started, and return its result: `failed`, with its whole tree gone."""
    repo = make_repo(tmp_path)
    env = configure(repo, "ray", ray_cluster)
    config = repo / ".aidp" / "config.toml"
    config.write_text(config.read_text() + executor_config)
    pids, marker = tmp_path / "pids", f"aidp-test-{uuid.uuid4().hex}"
    (tmp_path / "tree.py").write_text(tree_code(pids, marker))
    new_ws(repo, "lost", shlex.join([PYTHON, str(tmp_path / "tree.py"), marker]), env)
    run = spawn_cli(repo, "ws", "run", "--json", "lost", env=env)
    try:
        wait_until_sync(pids.exists, timeout=WAIT_S * 2, what="the harness's tree to start")
        lose(pids)
        got, err = ended(run, "lost")
    finally:
        if run.poll() is None:
            run.kill()
    assert got["status"] == "failed", (got, err)
    wait_until_sync(lambda: marked(marker) == [], what="the harness's tree to be ended")
    return got


async def test_serve_runs_on_the_cluster(ray_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`aidp serve` with `[executor] kind = "ray"`: the same notifications as a local run, and
    the host in the running and final statuses."""
    repo = make_repo(tmp_path)
    for name, value in configure(repo, "ray", ray_cluster).items():
        monkeypatch.setenv(name, value)
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello', sys.argv[1], flush=True)\n")
    async with lsp_session(server_command(repo), repo, init_params(root_uri=repo.as_uri())) as client:
        await client.call(
            "aidp/wsNew", {"slug": "far", "task": "say hello", "command": [PYTHON, str(script), "{slug}"]}
        )
        summary = await client.call("aidp/wsRun", {"slugs": ["far"]})
        result = summary["results"][0]
        assert (result["status"], result["exitCode"], result["host"]) == ("completed", 0, os.uname().nodename)
        await wait_until(lambda: any(s["status"] == "completed" for s in client.statuses("far")))
        statuses = client.statuses("far")
        running = [s for s in statuses if s["status"] == "running"]
        assert running and running[0]["host"] == os.uname().nodename
        output = "".join(n["text"] for n in client.of("aidp/wsOutput") if n["slug"] == "far")
        assert output == "hello far\n"


def test_the_cli_says_where_a_run_through_ray_ran(cluster_repo: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The host on the CLI's faces: the plain status lines of `ws run` ("running on <host>"), `ws
    status` (its host line and the run's start in the events), `ws list --json`."""
    repo, env = cluster_repo
    host = os.uname().nodename
    new_ws(repo, "far", harness(tmp_path, "far", "print('fine')\n"), env)
    ran = cli(repo, "ws", "run", "far", env=env, timeout=WAIT_S * 3)  # not a terminal: one line per status
    assert ran.returncode == 0, ran.stderr
    assert any(line.endswith(f" far running on {host}") for line in ran.stdout.splitlines()), ran.stdout
    status = cli(repo, "ws", "status", "far", env=env).stdout
    assert "last run:   completed" in status and f"  host: {host}\n" in status
    assert f" on {host}" in status.split("recent events:")[1]  # "pid N on <host>": where it started
    (listed,) = json.loads(cli(repo, "ws", "list", "--json", env=env).stdout)
    assert listed["lastResult"]["host"] == host and listed["currentRun"] is None


def test_aidp_killed_mid_run_takes_its_actors_along(ray_cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL of the aidp process running a workstream on the cluster: its actor dies with it (not
    detached), the watchdog ends the harness's tree, and the next aidp records the run interrupted,
    as for a local run."""
    repo = make_repo(tmp_path)
    env = configure(repo, "ray", ray_cluster)
    pids, marker = tmp_path / "pids", f"aidp-test-{uuid.uuid4().hex}"
    (tmp_path / "tree.py").write_text(tree_code(pids, marker))
    new_ws(repo, "orphan", shlex.join([PYTHON, str(tmp_path / "tree.py"), marker]), env)
    run = spawn_cli(repo, "ws", "run", "orphan", env=env)
    try:
        wait_until_sync(pids.exists, timeout=WAIT_S * 2, what="the harness's tree to start")
    finally:
        run.kill()
        run.communicate()
    wait_until_sync(lambda: marked(marker) == [], what="the harness's tree to be ended without aidp")
    listed = cli(repo, "ws", "list", "--json", env=env)
    ws = {w["slug"]: w for w in json.loads(listed.stdout)}["orphan"]
    assert ws["status"] == "cancelled"
    assert f"the aidp process (pid {run.pid}) that ran it is gone" in ws["lastResult"]["error"]


def test_ray_config_is_checked_where_it_enters(tmp_path: Path) -> None:
    """A bad `[executor]` is a clear error naming the key; `kind = "ray"` without Ray installed
    says how to install it (Ray hidden by a module that fails to import, first on the path)."""
    repo = make_repo(tmp_path)
    new_ws(repo, "cfg", shlex.join([PYTHON, "-c", "print('ran')"]), {})
    config = repo / ".aidp" / "config.toml"
    config.write_text('[executor]\nkind = "dask"\n')
    bad = cli(repo, "ws", "run", "cfg")
    assert bad.returncode == 2 and "executor.kind" in bad.stderr and "dask" not in listed_statuses(repo)
    config.write_text('[executor]\nkind = "ray"\nresources = { CPU = 0 }\n')
    bad = cli(repo, "ws", "run", "cfg")
    assert bad.returncode == 2 and "executor.resources" in bad.stderr
    config.write_text('[executor]\nkind = "ray"\n[sandbox]\nkind = "bwrap"\n')
    bad = cli(repo, "ws", "run", "cfg")
    assert bad.returncode == 2 and '[sandbox] kind = "bwrap"' in bad.stderr
    hidden = tmp_path / "no-ray"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    config.write_text('[executor]\nkind = "ray"\n')
    missing = cli(repo, "ws", "run", "cfg", env={"PYTHONPATH": str(hidden)})
    assert missing.returncode == 2, missing.stderr
    assert "pip install 'aidp[ray]'" in missing.stderr
    assert listed_statuses(repo) == {"cfg": "active"}  # nothing ran, nothing lost


def listed_statuses(repo: Path) -> dict[str, str]:
    listed = cli(repo, "ws", "list", "--json")
    return {w["slug"]: w["status"] for w in json.loads(listed.stdout)}


def test_silent_worker_is_lost_after_the_heartbeat_timeout(ray_cluster: Cluster, tmp_path: Path) -> None:
    """A worker that stops answering (SIGSTOP: a frozen node) ends the attempt `failed` once no
    heartbeat came for `heartbeat_timeout_s`; the actor is killed and the harness's tree goes."""

    def freeze(pids: Path) -> None:
        worker = psutil.Process(int(pids.read_text().split()[0])).parent()
        assert worker is not None and "ray::" in worker.name() + " ".join(worker.cmdline())
        worker.send_signal(signal.SIGSTOP)

    got = lose_a_running_tree(ray_cluster, tmp_path, "heartbeat_timeout_s = 5\n", freeze)
    assert got["error"].startswith("remote worker lost: no heartbeat for 5 s")
