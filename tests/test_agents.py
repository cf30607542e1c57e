"""Agent presets, `aidp init`, `aidp doctor` and long tasks, through the real CLI. The agents are
fake executables named like the real ones, on a PATH of their own, that record the argv,
environment and standard input they got."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import workstreams
from conftest import write_config
from server_helpers import initialize_params, lsp_session, server_command
from support import PYTHON, cli, git

from aidp.engine.config import load_config
from aidp.engine.presets import CLAUDE_STREAM_JSON, PRESETS, Preset, config_text

TASK = "Fix the login redirect loop; say {slug} literally"
BIG = 200_000  # bytes: past one argument's limit (MAX_ARG_STRLEN, 128 KiB)

AGENT = f"""#!{PYTHON}
import json, os, pathlib, sys
name = pathlib.Path(sys.argv[0]).name
record = {{
    "argv": sys.argv[1:],
    "env": {{k: v for k, v in os.environ.items() if k.startswith("AIDP_TASK")}},
    "stdin": sys.stdin.read(),
    "cwd": os.getcwd(),
}}
path = pathlib.Path(os.environ["RECORDS"]) / (name + "-" + os.environ["AIDP_SLUG"] + ".json")
path.write_text(json.dumps(record))
"""

# The argv each preset gives its agent (after the program), as each agent's documentation says.
EXPECTED = {
    "claude-code": (
        "claude",
        ["-p", TASK, "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits"],
    ),
    "codex": ("codex", ["exec", "--sandbox", "workspace-write", TASK]),
    "aider": ("aider", ["--yes-always", "--message-file", "{task_file}"]),
    "gemini": ("gemini", ["--approval-mode", "auto_edit", "-p", TASK]),
    "opencode": ("opencode", ["run", TASK]),
    "goose": ("goose", ["run", "-i", "{task_file}"]),
}


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH with git alone (so bubblewrap and real agents on this machine are not found)."""
    path = tmp_path / "tools"
    path.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (path / "git").symlink_to(git_path)
    return path


@pytest.fixture
def fakebin(tmp_path: Path) -> Path:
    path = tmp_path / "fakebin"
    path.mkdir()
    return path


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path


def fake_agent(fakebin: Path, name: str) -> Path:
    path = fakebin / name
    path.write_text(AGENT)
    path.chmod(0o755)
    return path


def env(fakebin: Path, tools: Path, records: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{fakebin}:{tools}", "RECORDS": str(records), "AIDP_CGROUPS": "0", **extra}


def run(repo: Path, environ: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = cli(repo, *args, env=environ)
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def recorded(records: Path, program: str, slug: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((records / f"{program}-{slug}.json").read_text())
    return data


def task_file_of(record: dict[str, Any]) -> str:
    path: str = record["env"]["AIDP_TASK_FILE"]
    return Path(path).read_text()


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_each_preset_runs_its_agent_non_interactively_with_the_task(
    repo: Path, fakebin: Path, tools: Path, records: Path, preset: str
) -> None:
    program, expected = EXPECTED[preset]
    fake_agent(fakebin, program)
    write_config(repo, f'[harness]\npreset = "{preset}"\n')
    environ = env(fakebin, tools, records)
    run(repo, environ, "ws", "new", "login", TASK)
    run(repo, environ, "ws", "run", "login")

    got = recorded(records, program, "login")
    task_file = got["env"]["AIDP_TASK_FILE"]
    assert got["argv"] == [task_file if arg == "{task_file}" else arg for arg in expected]
    assert got["env"]["AIDP_TASK"] == TASK and Path(task_file).read_text() == TASK
    assert got["stdin"] == "" and got["cwd"] == str(repo / ".worktrees" / "login")
    assert (Path(task_file).stat().st_mode & 0o777) == 0o600


def test_args_extra_appends_and_command_wins_over_the_preset(
    repo: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    fake_agent(fakebin, "claude")
    environ = env(fakebin, tools, records)
    write_config(repo, '[harness]\npreset = "claude-code"\nargs_extra = ["--model", "opus"]\n')
    run(repo, environ, "ws", "new", "extra", TASK)
    run(repo, environ, "ws", "run", "extra")
    assert recorded(records, "claude", "extra")["argv"][-3:] == ["acceptEdits", "--model", "opus"]

    write_config(
        repo,
        '[harness]\npreset = "claude-code"\ncommand = ["claude", "{task_file}"]\nargs_extra = ["--model", "opus"]\n',
    )
    run(repo, environ, "ws", "run", "extra")
    got = recorded(records, "claude", "extra")
    assert got["argv"] == [got["env"]["AIDP_TASK_FILE"], "--model", "opus"]

    # A workstream's own --command is taken as it is.
    run(repo, environ, "ws", "new", "own", TASK, "--command", "claude --own {slug}")
    run(repo, environ, "ws", "run", "own")
    assert recorded(records, "claude", "own")["argv"] == ["--own", "own"]


def test_an_unknown_preset_is_a_config_error_naming_the_presets(repo: Path) -> None:
    assert cli(repo, "ws", "new", "x", TASK).returncode == 0
    write_config(repo, '[harness]\npreset = "clod"\n')
    result = cli(repo, "ws", "run", "x")
    assert result.returncode == 2
    assert "unknown [harness] preset 'clod'; the presets are claude-code, codex, aider, gemini, opencode, goose" in (
        result.stderr
    )


# -- aidp init ----------------------------------------------------------------------------------


def test_init_writes_the_config_of_the_picked_agent_and_never_overwrites_without_force(
    repo: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    fake_agent(fakebin, "claude")
    fake_agent(fakebin, "aider")
    environ = env(fakebin, tools, records)
    config = repo / ".aidp" / "config.toml"

    # Two agents found and no terminal to ask on: refused, naming them.
    several = run(repo, environ, "init", ok=False)
    assert several.returncode == 2 and not config.exists()
    assert "several agents are on PATH (claude-code, aider); choose one with 'aidp init --preset NAME'" in (
        several.stderr
    )

    written = run(repo, environ, "init", "--preset", "aider")
    assert written.stdout == f"wrote {config} for Aider (preset aider)\n"
    text = config.read_text()
    assert 'preset = "aider"\n' in text and "https://aider.chat/docs/scripting.html" in text
    assert git(repo, "status", "--porcelain") == ""  # .aidp/ is excluded from git

    again = run(repo, environ, "init", "--preset", "claude-code", ok=False)
    assert again.returncode == 1 and f"{config} exists; 'aidp init --force' replaces it" in again.stderr
    assert config.read_text() == text

    run(repo, environ, "init", "--preset", "claude-code", "--force")
    assert 'preset = "claude-code"\n' in config.read_text()

    # The written config runs the agent.
    run(repo, environ, "ws", "new", "first", TASK)
    run(repo, environ, "ws", "run", "first")
    assert recorded(records, "claude", "first")["argv"][:2] == ["-p", TASK]


def test_init_picks_the_one_agent_found_or_writes_a_template(
    repo: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    environ = env(fakebin, tools, records)
    config = repo / ".aidp" / "config.toml"
    none = run(repo, environ, "init")
    assert none.stdout == f"wrote {config}: no known agent is on PATH; set [harness] command in it\n"
    template = config.read_text()
    assert '# command = ["my-agent", "--task", "{task}"]' in template
    assert all(line.startswith("#") or line in ("", "[harness]") for line in template.splitlines())
    doctor = run(repo, environ, "doctor", "--json", ok=False)
    assert doctor.returncode == 1
    assert {
        "level": "problem",
        "check": "harness",
        "message": "no harness configured: a run of a workstream without its own --command ends `error`",
        "fix": "set [harness] preset or command in .aidp/config.toml ('aidp init' writes one)",
    } in json.loads(doctor.stdout)["findings"]

    fake_agent(fakebin, "goose")
    run(repo, environ, "init", "--force")
    assert 'preset = "goose"\n' in config.read_text()


def test_init_asks_on_a_terminal(repo: Path, fakebin: Path, tools: Path, records: Path) -> None:
    """Two agents found and a terminal: the user's pick (by number) is written."""
    fake_agent(fakebin, "codex")
    fake_agent(fakebin, "opencode")
    script = shutil.which("script")
    assert script is not None, "util-linux's script(1) runs the CLI on a pseudo-terminal"
    command = f"{PYTHON} -m aidp init"
    result = subprocess.run(
        [script, "-qec", command, "/dev/null"],
        cwd=repo,
        input="2\n",
        env={**os.environ, **env(fakebin, tools, records)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1. OpenAI Codex CLI (codex)" in result.stdout and "2. opencode (opencode)" in result.stdout
    assert 'preset = "opencode"\n' in (repo / ".aidp" / "config.toml").read_text()


# -- aidp doctor --------------------------------------------------------------------------------


def git_version() -> str:
    return subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def ok_cgroups_and_sandbox() -> list[dict[str, Any]]:
    """With AIDP_CGROUPS=0 and no bwrap on PATH, as every doctor test here runs."""
    return [
        {
            "level": "warning",
            "check": "cgroups",
            "message": "cgroups turned off (AIDP_CGROUPS=0): cancel still ends each harness's process group and "
            "what carries its environment marker, but a process that both drops its environment and calls "
            "setsid may escape",
            "fix": "unset AIDP_CGROUPS",
        },
        {
            "level": "warning",
            "check": "sandbox",
            "message": "bubblewrap (bwrap) is not on PATH: harnesses run with your user's full rights",
            "fix": "install bubblewrap (apt-get install bubblewrap) to confine each harness to its worktree",
        },
    ]


def doctor(repo: Path, environ: dict[str, str], status: int) -> list[dict[str, Any]]:
    result = run(repo, environ, "doctor", "--json", ok=False)
    assert result.returncode == status, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == (status == 0)
    findings: list[dict[str, Any]] = report["findings"]
    for finding in findings:
        finding.setdefault("fix", None)
    return findings


def test_doctor_on_a_good_repository(repo: Path, fakebin: Path, tools: Path, records: Path) -> None:
    fake_agent(fakebin, "claude")
    environ = env(fakebin, tools, records)
    write_config(repo, '[harness]\npreset = "claude-code"\n')
    run(repo, environ, "ws", "new", "alpha", TASK)
    state = repo / ".aidp" / "state.db"
    assert doctor(repo, environ, 0) == [
        {"level": "ok", "check": "git", "message": git_version(), "fix": None},
        {"level": "ok", "check": "config", "message": f"{repo}/.aidp/config.toml parses", "fix": None},
        {
            "level": "ok",
            "check": "harness",
            "message": f"the harness ([harness] preset claude-code): claude ({fakebin}/claude)",
            "fix": None,
        },
        {"level": "ok", "check": "state", "message": f"{state}: integrity ok, 1 workstream", "fix": None},
        {
            "level": "ok",
            "check": "worktrees",
            "message": "every workstream's worktree and branch agree with the state (1)",
            "fix": None,
        },
        *ok_cgroups_and_sandbox(),
    ]

    # The text form: one line per finding, its fix below it, and the counts.
    fake_agent(fakebin, "bwrap")
    text = run(repo, environ, "doctor").stdout.splitlines()
    assert text[0] == f"     ok  git: {git_version()}"
    assert f"     ok  sandbox: bubblewrap found ({fakebin}/bwrap), but harnesses run unconfined" in text
    assert '         -> set [sandbox] kind = "bwrap" in .aidp/config.toml to confine each harness to its worktree' in (
        text
    )
    assert text[-1] == "0 problems, 1 warning"

    # Asked for, bubblewrap is a must.
    write_config(repo, '[harness]\npreset = "claude-code"\n[sandbox]\nkind = "bwrap"\n')
    assert doctor(repo, environ, 0)[-1] == {
        "level": "ok",
        "check": "sandbox",
        "message": f"harnesses run under bubblewrap ({fakebin}/bwrap)",
        "fix": None,
    }
    (fakebin / "bwrap").unlink()
    assert doctor(repo, environ, 1)[-1] == {
        "level": "problem",
        "check": "sandbox",
        "message": '[sandbox] kind = "bwrap", but bubblewrap (bwrap) is not on PATH: every run ends `error`',
        "fix": 'install bubblewrap (apt-get install bubblewrap), or set [sandbox] kind = "none"',
    }


def test_doctor_finds_a_missing_harness_a_deleted_worktree_and_a_deleted_branch(
    repo: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    environ = env(fakebin, tools, records)
    write_config(repo, '[harness]\ncommand = ["no-such-agent", "{task}"]\n')
    for slug in ("alpha", "beta", "gamma"):
        run(repo, environ, "ws", "new", slug, TASK)
    shutil.rmtree(repo / ".worktrees" / "alpha")  # deleted by hand
    git(repo, "update-ref", "-d", "refs/heads/aidp/beta")  # its branch deleted
    git(repo, "worktree", "add", "-q", "-b", "aidp/stray", str(repo / ".worktrees" / "stray"))  # no workstream

    state = repo / ".aidp" / "state.db"
    findings = doctor(repo, environ, 1)
    assert findings[2:] == [
        {
            "level": "problem",
            "check": "harness",
            "message": "the harness ([harness] command): 'no-such-agent' is not found on PATH",
            "fix": "install 'no-such-agent' or put it on PATH, or change [harness] in .aidp/config.toml",
        },
        {
            "level": "ok",
            "check": "state",
            "message": f"{state}: integrity ok, 3 workstreams",
            "fix": None,
        },
        {
            "level": "problem",
            "check": "worktrees",
            "message": f"alpha: its worktree {repo}/.worktrees/alpha is missing",
            "fix": "'aidp ws rm alpha' removes what remains (--delete-branch also drops aidp/alpha)",
        },
        {
            "level": "problem",
            "check": "worktrees",
            "message": "beta: its branch aidp/beta is missing",
            "fix": "restore it ('git branch aidp/beta <commit>', the commit from 'git reflog'), or "
            "'aidp ws rm beta --force' and create it again",
        },
        {
            "level": "problem",
            "check": "worktrees",
            "message": f"worktree {repo}/.worktrees/stray (branch aidp/stray) is no workstream",
            "fix": "'aidp ws new stray <task...>' adopts it",
        },
        *ok_cgroups_and_sandbox(),
    ]
    assert [f["check"] for f in findings[:2]] == ["git", "config"]


def test_doctor_finds_a_damaged_state_database(repo: Path, fakebin: Path, tools: Path, records: Path) -> None:
    fake_agent(fakebin, "claude")
    environ = env(fakebin, tools, records)
    write_config(repo, '[harness]\npreset = "claude-code"\n')
    run(repo, environ, "ws", "new", "alpha", TASK)
    state = repo / ".aidp" / "state.db"
    with state.open("r+b") as db:  # past the header: the pages of the tables
        db.seek(4096)
        db.write(b"\xff" * 8192)

    findings = doctor(repo, environ, 1)
    damaged = next(f for f in findings if f["check"] == "state")
    assert damaged["level"] == "problem"
    assert damaged["message"].startswith(f"the state database {state} is damaged (integrity_check: ")
    assert damaged["fix"] == (
        f"move it aside with its -wal and -shm files (mkdir {state.parent}/broken && mv {state}* "
        f"{state.parent}/broken/), then restore it from a backup, or re-create each workstream with "
        "'aidp ws new <slug> <task>', which adopts its worktree"
    )
    assert [f["check"] for f in findings] == ["git", "config", "harness", "state", "cgroups", "sandbox"]


# -- long tasks ---------------------------------------------------------------------------------


def big_task(tmp_path: Path) -> tuple[str, Path]:
    text = "".join(f"line {n}: é and {{slug}}\n" for n in range(BIG // 20))
    assert len(text.encode()) > BIG
    path = tmp_path / "task.md"
    path.write_text(text)
    return text, path


def test_a_200_kb_task_reaches_the_harness_through_its_task_file_and_on_stdin(
    repo: Path, tmp_path: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    fake_agent(fakebin, "aider")
    fake_agent(fakebin, "claude")
    environ = env(fakebin, tools, records)
    text, path = big_task(tmp_path)
    run(repo, environ, "ws", "new", "long", "--task-file", str(path))

    write_config(repo, '[harness]\npreset = "aider"\n')  # --message-file {task_file}
    run(repo, environ, "ws", "run", "long")
    got = recorded(records, "aider", "long")
    assert Path(got["argv"][-1]).read_text() == text and task_file_of(got) == text
    assert "AIDP_TASK" not in got["env"]  # too long for one environment string

    write_config(repo, '[harness]\ncommand = ["claude", "-p"]\nstdin = "task"\n')
    run(repo, environ, "ws", "run", "long")
    got = recorded(records, "claude", "long")
    assert got["stdin"] == text and got["argv"] == ["-p"]

    # From standard input too.
    piped = subprocess.run(
        [PYTHON, "-m", "aidp", "ws", "new", "piped", "--task-file", "-"],
        cwd=repo,
        input=text,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert workstreams(repo)["piped"]["task"] == text


def test_a_task_the_argv_cannot_carry_is_refused_at_run_start_naming_the_other_ways(
    repo: Path, tmp_path: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    fake_agent(fakebin, "claude")
    environ = env(fakebin, tools, records)
    write_config(repo, '[harness]\npreset = "claude-code"\n')  # -p {task}
    _, path = big_task(tmp_path)
    run(repo, environ, "ws", "new", "long", "--task-file", str(path))
    result = run(repo, environ, "ws", "run", "long", "--json", ok=False)
    assert result.returncode == 1
    [outcome] = json.loads(result.stdout)["results"]
    assert outcome["status"] == "error"
    error = outcome["error"]
    assert error.startswith("cannot start 'claude': one argument is ")
    assert "{task_file} in [harness] command" in error and '[harness] stdin = "task"' in error
    assert not (records / "claude-long.json").exists()
    assert workstreams(repo)["long"]["status"] == "error"


def test_task_words_and_task_file_are_exclusive_and_one_is_needed(repo: Path, tmp_path: Path) -> None:
    _, path = big_task(tmp_path)
    both = cli(repo, "ws", "new", "x", "words", "--task-file", str(path))
    assert both.returncode == 2 and "argument --task-file: not allowed with argument task" in both.stderr
    neither = cli(repo, "ws", "new", "x")
    assert neither.returncode == 2 and "one of the arguments task --task-file is required" in neither.stderr
    missing = cli(repo, "ws", "new", "x", "--task-file", str(tmp_path / "nope.md"))
    assert missing.returncode == 2 and f"cannot read the task file {tmp_path}/nope.md" in missing.stderr


# -- aidp/doctor over JSON-RPC ------------------------------------------------------------------


async def test_doctor_over_json_rpc_says_what_the_cli_says_even_when_the_state_is_damaged(
    repo: Path, tmp_path: Path
) -> None:
    write_config(repo, f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n')
    assert cli(repo, "ws", "new", "alpha", TASK).returncode == 0
    good = json.loads(cli(repo, "doctor", "--json").stdout)
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        assert await client.call("aidp/doctor", {}) == good
        assert (await client.fails("aidp/doctor", {"extra": 1})).code == -32602

    with (repo / ".aidp" / "state.db").open("r+b") as db:
        db.seek(4096)
        db.write(b"\xff" * 8192)
    damaged = json.loads(cli(repo, "doctor", "--json").stdout)
    assert not damaged["ok"] and any(f["check"] == "state" and f["level"] == "problem" for f in damaged["findings"])
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        assert (await client.fails("aidp/wsList", {})).code == -32803  # no engine over a damaged database
        assert await client.call("aidp/doctor", {}) == damaged


def test_a_sandbox_that_hides_the_checkout_still_gives_the_harness_its_task(repo: Path, tmp_path: Path) -> None:
    """The task file lives under `.aidp/logs/` of the main checkout, which `hide_others` hides."""
    write_config(repo, '[harness]\nstdin = "task"\n[sandbox]\nkind = "bwrap"\nhide_others = true\n')
    text, path = big_task(tmp_path)
    read = """sh -c 'cat "$AIDP_TASK_FILE" > from-file && cat > from-stdin'"""
    assert cli(repo, "ws", "new", "long", "--task-file", str(path), "--command", read).returncode == 0
    result = cli(repo, "ws", "run", "long", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    worktree = repo / ".worktrees" / "long"
    assert (worktree / "from-file").read_text() == text and (worktree / "from-stdin").read_text() == text


@pytest.mark.parametrize("preset", [None, *PRESETS.values()], ids=lambda p: p.name if p else "template")
def test_what_init_writes_parses_and_runs_the_preset(tmp_path: Path, preset: Preset | None) -> None:
    write_config(tmp_path, config_text(preset))
    harness = load_config(tmp_path / ".aidp").harness
    assert harness.resolved_command == (None if preset is None else list(preset.argv))
    assert harness.output == (CLAUDE_STREAM_JSON if preset is not None and preset.name == "claude-code" else None)


def test_doctor_finds_a_harness_that_cannot_run_and_a_config_that_does_not_parse(
    repo: Path, fakebin: Path, tools: Path, records: Path
) -> None:
    environ = env(fakebin, tools, records)
    agent = fake_agent(fakebin, "claude")
    agent.chmod(0o644)
    write_config(repo, '[harness]\npreset = "claude-code"\n')
    assert doctor(repo, environ, 1)[2] == {
        "level": "problem",
        "check": "harness",
        "message": "the harness ([harness] preset claude-code): 'claude' is not executable",
        "fix": f"make it executable (chmod +x {agent})",
    }

    config = write_config(repo, '[harness]\npreset = "claude-code"\ntimeout_s = "soon"\n')
    findings = doctor(repo, environ, 1)
    assert findings[1] == {
        "level": "problem",
        "check": "config",
        "message": f"{config}: Expected `float | null`, got `str` - at `$.harness.timeout_s`",
        "fix": f"correct it, or write a fresh one with 'aidp init --force' (it replaces {config})",
    }
    assert [f["check"] for f in findings] == ["git", "config", "state", "cgroups", "sandbox"]
