"""Issue 15, sandboxed workstreams: real bubblewrap, the real CLI and `aidp serve` over stdio.

A sandboxed harness writes its own worktree and nothing else, commits on its own branch (which
follows it, fast-forward only) and moves no other; `network = false` cuts it off; what it starts
dies with the workstream however it detached; a missing bwrap is a clear error, never a run
without the sandbox. Facts are read from the filesystem, git and /proc, never from timing."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import new_ws, spawn_cli, workstreams
from conftest import write_config
from server_helpers import initialize_params, lsp_session, server_command
from support import PYTHON, cli, git, make_repo, pid_alive, wait_until, wait_until_sync

from aidp.engine.config import Sandbox
from aidp.engine.sandbox import GitDirs, bwrap_argv

pytestmark = pytest.mark.timeout(150)

BWRAP = '[sandbox]\nkind = "bwrap"\n'


def sh(script: str) -> str:
    """A `--command` that runs `script` with sh (the harness's own argv, never parsed by aidp)."""
    return shlex.join(["sh", "-c", script])


def results(completed: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {r["slug"]: r for r in json.loads(completed.stdout)["results"]}


def head_ref(worktree: Path) -> str:
    return git(worktree, "symbolic-ref", "--quiet", "HEAD").strip()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside the repository and outside /tmp (which the sandbox makes private):
    writable by this test, on the filesystem the sandbox shows read-only."""
    path = Path(tempfile.mkdtemp(prefix="aidp-sandbox-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home_target() -> Iterator[Path]:
    path = Path.home() / f"aidp-sandbox-test-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


# -- writes: its own worktree, and nothing else ---------------------------------------------------


@pytest.mark.parametrize("face", ["cli", "server"])
async def test_a_sandboxed_harness_writes_its_worktree_and_nothing_else(
    tmp_path: Path, face: str, outside: Path, home_target: Path
) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP)
    new_ws(repo, "other", "true")
    other = repo / ".worktrees" / "other"
    hidden = tmp_path / "beside-the-repo"  # exists outside; under the sandbox's private /tmp
    hidden.mkdir()
    targets = [repo / "README.md", other / "intruder.txt", home_target, outside / "x.txt", hidden / "x.txt"]
    attempts = "".join(
        f"if echo sandboxed >> {shlex.quote(str(t))}; then echo 'wrote {t}'; else echo 'refused {t}'; fi; "
        for t in targets
    )
    new_ws(repo, "agent", sh(attempts + "echo mine > own.txt"))

    if face == "cli":
        run = cli(repo, "ws", "run", "agent", "--json")
        assert run.returncode == 0, run.stdout + run.stderr
        result = results(run)["agent"]
    else:
        async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
            summary = await client.call("aidp/wsRun", {"slugs": ["agent"]})
            result = summary["results"][0]
            assert (await client.workstreams())["agent"]["lastResult"]["sandbox"] == "bwrap"
    assert (result["status"], result["sandbox"]) == ("completed", "bwrap")

    assert (repo / ".worktrees" / "agent" / "own.txt").read_text() == "mine\n"
    assert (repo / "README.md").read_text() == "hello\n"
    for target in targets[1:]:
        assert not target.exists(), f"the sandboxed harness wrote {target}"
    log = Path(result["logPath"]).read_text()
    assert [line.split()[0] for line in log.splitlines() if line.startswith(("wrote", "refused"))] == ["refused"] * 5
    status = cli(repo, "ws", "status", "agent").stdout
    assert "last run:   completed (exit 0" in status and "sandboxed: bwrap)" in status


def test_hide_others_hides_the_main_checkout_and_the_other_worktrees(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP + "hide_others = true\n")
    new_ws(repo, "other", "true")
    look = f"test ! -e {repo / 'README.md'} && test ! -e {repo / '.worktrees' / 'other'} && "
    new_ws(repo, "agent", sh(look + "cat README.md && git commit -q --allow-empty -m seen-nothing"))
    result = results(cli(repo, "ws", "run", "agent", "--json"))["agent"]
    assert (result["status"], result["sandbox"]) == ("completed", "bwrap, others hidden"), result
    assert git(repo, "log", "-1", "--format=%s", "aidp/agent").strip() == "seen-nothing"


# -- git: commits on its own branch, which lands; no other branch moves ----------------------------


@pytest.mark.parametrize("who", ["harness", "auto-commit"])
def test_it_commits_on_its_branch_and_the_branch_lands(tmp_path: Path, who: str) -> None:
    repo = make_repo(tmp_path)
    if who == "harness":
        write_config(repo, BWRAP)
        agent = sh("echo work > work.txt && git add work.txt && git commit -qm 'sandboxed work'")
    else:  # aidp commits what it left, on the detached HEAD, before the branch follows
        write_config(repo, BWRAP + '[harness]\ncommit = "on-success"\n')
        agent = sh("echo work > work.txt")
    new_ws(repo, "agent", agent, task="sandboxed work")
    worktree = repo / ".worktrees" / "agent"
    base = git(repo, "rev-parse", "aidp/agent").strip()

    run = cli(repo, "ws", "run", "agent", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    head = git(worktree, "rev-parse", "HEAD").strip()
    assert git(repo, "rev-parse", "aidp/agent").strip() == head != base
    assert git(repo, "show", "aidp/agent:work.txt") == "work\n"
    assert head_ref(worktree) == "refs/heads/aidp/agent"  # attached again
    assert f"sandboxed run: moved aidp/agent to {head[:12]} (fast-forward from {base[:12]})" in (
        cli(repo, "ws", "status", "agent").stdout
    )

    land = cli(repo, "ws", "land", "agent")
    assert land.returncode == 0, land.stdout + land.stderr
    assert git(repo, "show", "main:work.txt") == "work\n"


def test_it_cannot_move_another_branch_nor_have_its_own_rewritten(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP)
    new_ws(repo, "victim", "true")
    common = repo / ".git"
    attacks = [
        "git update-ref refs/heads/aidp/victim HEAD",
        "git branch -f aidp/victim HEAD",
        "git -C ../victim commit -q --allow-empty -m hijacked",
        f"git rev-parse HEAD > {common}/refs/heads/aidp/victim",
        "git update-ref refs/heads/main HEAD",
    ]
    script = "git commit -q --allow-empty -m mine; " + "".join(f"{a} && echo 'moved: {a}'; " for a in attacks)
    # Then a history that does not descend from its branch: refused at the end, nothing overwritten.
    script += 'orphan=$(git commit-tree -m orphan "$(git write-tree)") && git reset -q --hard "$orphan"'
    new_ws(repo, "agent", sh(script))
    before = {b: git(repo, "rev-parse", b).strip() for b in ("aidp/victim", "main", "aidp/agent")}

    run = cli(repo, "ws", "run", "agent", "--json")
    result = results(run)["agent"]
    assert result["status"] == "failed", result
    assert "aidp/agent was not moved" in result["error"] and "does not descend" in result["error"]
    assert "moved:" not in Path(result["logPath"]).read_text()
    assert {b: git(repo, "rev-parse", b).strip() for b in before} == before
    worktree = repo / ".worktrees" / "agent"
    orphan = git(worktree, "rev-parse", "HEAD").strip()
    assert git(worktree, "log", "-1", "--format=%s", orphan).strip() == "orphan"  # kept, detached
    assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=worktree, check=False).returncode == 1

    again = cli(repo, "ws", "run", "agent", "--json")  # refused before anything starts
    result = results(again)["agent"]
    assert result["status"] == "error" and "does not descend from aidp/agent" in result["error"]
    assert git(worktree, "rev-parse", "HEAD").strip() == orphan


# -- network -------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", [True, False])
def test_network_false_cuts_the_harness_off(tmp_path: Path, network: bool) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP + f"network = {str(network).lower()}\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=30); print('connected')"
        # The venv may be under /tmp, which the sandbox replaces: its base interpreter is outside.
        new_ws(repo, "caller", shlex.join([os.path.realpath(PYTHON), "-c", connect]))
        result = results(cli(repo, "ws", "run", "caller", "--json"))["caller"]
    log = Path(result["logPath"]).read_text()
    if network:
        assert (result["status"], result["sandbox"], log) == ("completed", "bwrap", "connected\n")
    else:
        assert (result["status"], result["sandbox"]) == ("failed", "bwrap, no network")
        assert "ConnectionRefusedError" in log


# -- processes: everything dies with the workstream ------------------------------------------------

# Starts a `setsid` daemon and a double-forked child, both without aidp's environment marker (the
# escape no cgroup can catch unsandboxed), says so in its worktree, then waits for `go` (exit) or for
# ever; a TERM is noted and ignored, so cancel and timeout must end it with KILL after the grace.
LEAKY = """
trap 'touch term-seen' TERM
sleep=$(command -v sleep)
env -i SANDBOX_MARK="$SANDBOX_MARK" setsid "$sleep" 300 &
sh -c 'env -i SANDBOX_MARK="$SANDBOX_MARK" "$1" 301 &' double-fork "$sleep"
touch ready
until [ -e go ]; do "$sleep" 0.05; done
[ "$1" = exit ] && exit 0
while :; do "$sleep" 0.05; done
"""


def marked(mark: str) -> list[int]:
    """Live processes whose environment holds SANDBOX_MARK=<mark> (host pids)."""
    needle = f"SANDBOX_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return found


@pytest.mark.parametrize("cgroups", ["auto", "off"], ids=["cgroups", "no-cgroups"])
@pytest.mark.parametrize("how", ["exit", "cancel", "timeout"])
def test_daemons_die_with_the_workstream(tmp_path: Path, how: str, cgroups: str) -> None:
    repo = make_repo(tmp_path)
    mark = uuid.uuid4().hex
    write_config(repo, BWRAP + f'[harness]\ngrace_s = 1\nenv = {{ SANDBOX_MARK = "{mark}" }}\n')
    new_ws(repo, "leaky", shlex.join(["sh", "-c", LEAKY, "leaky", how]))
    worktree = repo / ".worktrees" / "leaky"
    env = {"AIDP_CGROUPS": "0"} if cgroups == "off" else {}
    run = spawn_cli(repo, "ws", "run", "leaky", *(["--timeout", "5"] if how == "timeout" else []), env=env)
    wait_until_sync(lambda: (worktree / "ready").exists(), what="the harness's daemons")
    wait_until_sync(lambda: len(marked(mark)) >= 3, what="the harness, its setsid daemon and its orphan")
    (worktree / "go").touch()
    if how == "cancel":
        assert cli(repo, "ws", "cancel", "leaky", env=env).returncode == 0
    run.wait(60)
    assert marked(mark) == [], "a process of the sandboxed workstream outlived it"
    expected = {"exit": "completed", "cancel": "cancelled", "timeout": "failed"}[how]
    assert workstreams(repo)["leaky"]["status"] == expected
    assert (worktree / "term-seen").exists() == (how != "exit")  # the harness got its TERM first


async def test_cancel_through_the_server_ends_the_whole_sandbox(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    mark = uuid.uuid4().hex
    write_config(repo, BWRAP + f'[harness]\ngrace_s = 1\nenv = {{ SANDBOX_MARK = "{mark}" }}\n')
    new_ws(repo, "leaky", shlex.join(["sh", "-c", LEAKY, "leaky", "cancel"]))
    worktree = repo / ".worktrees" / "leaky"
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        running = client.start_call("aidp/wsRun", {"slugs": ["leaky"]})
        await wait_until(lambda: len(marked(mark)) >= 3 and (worktree / "ready").exists(), what="the daemons")
        (worktree / "go").touch()
        await client.call("aidp/wsCancel", {"slugs": ["leaky"]})
        summary = await running
        assert [(r["status"], r["sandbox"]) for r in summary["results"]] == [("cancelled", "bwrap")]
        assert marked(mark) == []
        assert (worktree / "term-seen").exists()
        assert client.statuses("leaky")[-1]["sandbox"] == "bwrap"


def test_a_dead_aidp_takes_its_sandbox_along_and_recovery_keeps_the_commits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    mark = uuid.uuid4().hex
    write_config(repo, BWRAP + f'[harness]\nenv = {{ SANDBOX_MARK = "{mark}" }}\n')
    new_ws(repo, "agent", sh("git commit -q --allow-empty -m before-the-crash && touch committed && exec sleep 300"))
    worktree = repo / ".worktrees" / "agent"
    owner = spawn_cli(repo, "ws", "run", "agent")
    wait_until_sync(lambda: (worktree / "committed").exists() and marked(mark) != [], what="the commit")
    owner.kill()
    owner.wait(30)
    wait_until_sync(lambda: marked(mark) == [], what="the sandbox to die with aidp")

    assert workstreams(repo)["agent"]["status"] == "cancelled"  # read: recovery ran
    assert head_ref(worktree) == "refs/heads/aidp/agent"
    assert git(repo, "log", "-1", "--format=%s", "aidp/agent").strip() == "before-the-crash"
    assert "sandboxed run: moved aidp/agent" in cli(repo, "ws", "status", "agent").stdout


# -- a sandbox that cannot start is an error, never a run without it -------------------------------


def path_without_bwrap(tmp_path: Path) -> str:
    """A PATH holding what aidp and the harness need, and no bwrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("git", "sh", "env", "touch"):
        found = shutil.which(program)
        assert found is not None
        (bin_dir / program).symlink_to(found)
    return str(bin_dir)


@pytest.mark.parametrize("face", ["cli", "server"])
async def test_a_missing_bwrap_is_a_clear_error(tmp_path: Path, face: str, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP)
    new_ws(repo, "agent", sh("touch ran"))
    path = path_without_bwrap(tmp_path)
    if face == "cli":
        run = cli(repo, "ws", "run", "agent", "--json", env={"PATH": path})
        assert run.returncode == 1
        result = results(run)["agent"]
    else:
        monkeypatch.setenv("PATH", path)  # the server inherits it
        async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
            result = (await client.call("aidp/wsRun", {"slugs": ["agent"]}))["results"][0]
    assert result["status"] == "error"
    assert result["sandbox"] is None
    assert "bwrap is not on PATH" in result["error"] and "install bubblewrap" in result["error"]
    worktree = repo / ".worktrees" / "agent"
    assert not (worktree / "ran").exists()
    assert head_ref(worktree) == "refs/heads/aidp/agent"  # nothing was prepared


# -- the argv, the config ------------------------------------------------------------------------


def test_the_bwrap_argv_puts_the_repository_rules_above_the_writable_list() -> None:
    root, worktree = Path("/work/repo"), Path("/work/repo/.worktrees/x")
    dirs = GitDirs(common=root / ".git", objects=root / ".git/objects", admin=root / ".git/worktrees/x")
    config = Sandbox(kind="bwrap", writable=["/work", "/root/.claude"], network=False)
    argv = bwrap_argv(config, worktree, root, dirs, "/usr/bin/bwrap", "/usr/bin/env")
    assert argv[:3] == ["/usr/bin/env", "--ignore-signal=TERM", "/usr/bin/bwrap"]
    assert argv[-3:] == ["--", "/usr/bin/env", "--default-signal=TERM"]
    mounts = [tuple(argv[i : i + 2]) for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--tmpfs")]
    order = [m for m in mounts if m[1] in ("/work", str(root), str(dirs.objects), str(dirs.admin), str(worktree))]
    assert order == [
        ("--bind", "/work"),
        ("--ro-bind", str(root)),
        ("--bind", str(dirs.objects)),
        ("--bind", str(dirs.admin)),
        ("--bind", str(worktree)),
    ]
    assert {"--unshare-net", "--unshare-pid", "--die-with-parent"} <= set(argv)
    assert "--new-session" not in argv  # it would take the harness out of the group aidp signals

    hidden = bwrap_argv(Sandbox(kind="bwrap", hide_others=True), worktree, root, dirs)
    pairs = [tuple(hidden[i : i + 2]) for i in range(len(hidden))]
    assert pairs.index(("--tmpfs", str(root))) < pairs.index(("--ro-bind", str(dirs.common)))
    assert "--unshare-net" not in hidden


def test_a_sandboxed_harness_reports_progress_through_its_channel(tmp_path: Path) -> None:
    """The progress file lives under `.aidp/` (read-only inside): the run's own file is bound writable."""
    repo = make_repo(tmp_path)
    write_config(repo, BWRAP)
    new_ws(repo, "reporter", sh('echo \'{"percent": 50, "message": "half way"}\' >> "$AIDP_PROGRESS" && sleep 2'))
    run = spawn_cli(repo, "ws", "run", "reporter", "--json")
    seen: list[dict[str, Any]] = []

    def reported() -> bool:
        current = workstreams(repo)["reporter"].get("currentRun") or {}
        if current.get("progress"):
            seen.append(current["progress"])
        return bool(seen) or run.poll() is not None

    wait_until_sync(reported, what="the progress report reaches ws list")
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert seen and seen[0]["percent"] == 50 and seen[0]["message"] == "half way"
    assert results(subprocess.CompletedProcess([], 0, stdout, stderr))["reporter"]["sandbox"] == "bwrap"
