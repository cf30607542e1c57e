"""`aidp doctor`: what stands between this repository and a good run, each finding with what to
do about it. It reads and changes nothing: the state database is opened read-only, and no run
is recovered or stopped (any other aidp command does that)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Literal

import msgspec

from aidp.engine import cgroups, gitrepo, harness
from aidp.engine.config import CONFIG_NAME, Config, load_config
from aidp.engine.engine import STATE_DB
from aidp.engine.errors import AidpError, ConfigError
from aidp.engine.model import Workstream
from aidp.engine.store import Store, state_exists

Level = Literal["ok", "warning", "problem"]
GIT_MIN = (2, 38)  # `git merge-tree --write-tree`: review, conflicts and land


class Finding(msgspec.Struct, kw_only=True):
    level: Level
    check: str  # git, config, harness, state, worktrees, cgroups, sandbox
    message: str  # what was found
    fix: str | None = None  # what to do (for an `ok`, a recommendation where there is one)


class DoctorReport(msgspec.Struct, kw_only=True):
    ok: bool  # no `problem` among the findings
    findings: list[Finding]


async def diagnose(root: Path) -> DoctorReport:
    findings = [await _git()]
    config, config_finding = _config(root)
    findings.append(config_finding)
    state, records = await asyncio.to_thread(_state, root)
    if config is not None:
        findings += _harness(root, config, records or [])
    findings.append(state)
    if records is not None:
        findings += await _worktrees(root, records)
    elif not state_exists(root / gitrepo.STATE_DIR / STATE_DB):
        findings += await _unrecorded_worktrees(root, set())
    findings += [_cgroups(), _sandbox(config)]
    return DoctorReport(ok=all(f.level != "problem" for f in findings), findings=findings)


async def _git() -> Finding:
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "--version",
            stdin=asyncio.subprocess.DEVNULL,  # a server's stdin is its JSON-RPC channel
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
    except OSError:
        return Finding(level="problem", check="git", message="git is not on PATH", fix="install git 2.38 or later")
    text = out.decode(errors="replace").strip()
    found = re.search(r"(\d+)\.(\d+)", text)
    version = (int(found[1]), int(found[2])) if found else (0, 0)
    if version < GIT_MIN:
        return Finding(
            level="warning",
            check="git",
            message=f"{text}: workstreams run, but review, conflicts and land need git 2.38 or later "
            "(git merge-tree --write-tree)",
            fix="upgrade git to 2.38 or later",
        )
    return Finding(level="ok", check="git", message=text)


def _config(root: Path) -> tuple[Config | None, Finding]:
    path = root / gitrepo.STATE_DIR / CONFIG_NAME
    if not path.exists():
        return Config(), Finding(
            level="warning",
            check="config",
            message=f"no {path}: runs have no harness unless each workstream has its own --command",
            fix="run 'aidp init' to write one for a coding agent on PATH",
        )
    try:
        return load_config(root / gitrepo.STATE_DIR), Finding(level="ok", check="config", message=f"{path} parses")
    except ConfigError as exc:
        return None, Finding(
            level="problem",
            check="config",
            message=str(exc),
            fix=f"correct it, or write a fresh one with 'aidp init --force' (it replaces {path})",
        )


def _harness(root: Path, config: Config, records: list[Workstream]) -> list[Finding]:
    """The configured harness, and each workstream's own `--command`, found and executable."""
    findings: list[Finding] = []
    command = config.harness.resolved_command
    origin = f"preset {config.harness.preset}" if config.harness.preset and not config.harness.command else "command"
    if command is None and not (records and all(ws.command for ws in records)):
        findings.append(
            Finding(
                level="problem",
                check="harness",
                message="no harness configured: a run of a workstream without its own --command ends `error`",
                fix="set [harness] preset or command in .aidp/config.toml ('aidp init' writes one)",
            )
        )
    elif command is not None:
        findings.append(_program(root, command[0], f"the harness ([harness] {origin})"))
    for ws in records:
        if ws.command:
            finding = _program(root, ws.command[0], f"{ws.slug}'s own --command")
            if finding.level != "ok":
                finding.fix = f"'aidp ws rm {ws.slug}' and create it again with a --command that runs"
                findings.append(finding)
    return findings


def _program(root: Path, program: str, what: str) -> Finding:
    try:
        harness.find_program(program, root, os.environ)
    except FileNotFoundError:
        return Finding(
            level="problem",
            check="harness",
            message=f"{what}: {program!r} is not found" + ("" if "/" in program else " on PATH"),
            fix=f"install {program!r} or put it on PATH, or change [harness] in .aidp/config.toml",
        )
    except PermissionError:
        return Finding(
            level="problem",
            check="harness",
            message=f"{what}: {program!r} is not executable",
            fix=f"make it executable (chmod +x {shutil.which(program, mode=os.F_OK) or program})",
        )
    where = program if "/" in program else shutil.which(program)
    return Finding(level="ok", check="harness", message=f"{what}: {program} ({where})")


def _state(root: Path) -> tuple[Finding, list[Workstream] | None]:
    """The database's own integrity check, read-only; then its workstreams, or None when it
    cannot be read."""
    path = root / gitrepo.STATE_DIR / STATE_DB
    if not state_exists(path):
        return Finding(
            level="ok", check="state", message=f"no state database yet ({path} is made by the first 'aidp ws new')"
        ), None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        return Finding(
            level="problem",
            check="state",
            message=f"the state database {path} is damaged (integrity_check: {'; '.join(problems)})",
            fix=f"move it aside with its -wal and -shm files (mkdir {path.parent}/broken && mv {path}* "
            f"{path.parent}/broken/), then restore it from a backup, or re-create each workstream with "
            "'aidp ws new <slug> <task>', which adopts its worktree",
        ), None
    try:
        store = Store(path, create=False)
    except (AidpError, sqlite3.Error) as exc:
        return Finding(level="problem", check="state", message=f"cannot read {path}: {exc}"), None
    try:
        records = store.all()
    finally:
        store.close()
    count = f"{len(records)} workstream" + ("" if len(records) == 1 else "s")
    return Finding(level="ok", check="state", message=f"{path}: integrity ok, {count}"), records


async def _worktrees(root: Path, records: list[Workstream]) -> list[Finding]:
    """Each workstream's worktree and branch exist, and every aidp worktree is a workstream."""
    findings: list[Finding] = []
    for ws in records:
        if not (Path(ws.path) / ".git").exists():
            findings.append(
                Finding(
                    level="problem",
                    check="worktrees",
                    message=f"{ws.slug}: its worktree {ws.path} is missing",
                    fix=f"'aidp ws rm {ws.slug}' removes what remains (--delete-branch also drops {ws.branch})",
                )
            )
        if not await gitrepo.branch_exists(root, ws.branch):
            findings.append(
                Finding(
                    level="problem",
                    check="worktrees",
                    message=f"{ws.slug}: its branch {ws.branch} is missing",
                    fix=f"restore it ('git branch {ws.branch} <commit>', the commit from 'git reflog'), or "
                    f"'aidp ws rm {ws.slug} --force' and create it again",
                )
            )
    findings += await _unrecorded_worktrees(root, {Path(ws.path) for ws in records})
    if not findings:
        findings.append(
            Finding(
                level="ok",
                check="worktrees",
                message=f"every workstream's worktree and branch agree with the state ({len(records)})",
            )
        )
    return findings


async def _unrecorded_worktrees(root: Path, known: set[Path]) -> list[Finding]:
    """aidp worktrees (on an `aidp/*` branch) that are none of the `known` workstreams' paths."""
    return [
        Finding(
            level="problem",
            check="worktrees",
            message=f"worktree {w.path} (branch {w.branch}) is no workstream",
            fix=f"'aidp ws new {w.path.name} <task...>' adopts it"
            if w.branch == f"aidp/{w.path.name}"
            else f"remove it with 'git worktree remove {w.path}'",
        )
        for w in await gitrepo.worktrees(root)
        if (w.branch or "").startswith("aidp/") and w.path != root and w.path not in known
    ]


def _cgroups() -> Finding:
    if cgroups.available():
        if harness.starts_directly():
            return Finding(level="ok", check="cgroups", message="cgroups v2: each harness runs in a cgroup of its own")
        return Finding(
            level="ok",
            check="cgroups",
            message="cgroups v2: each harness runs in a cgroup of its own, started through sh (the native "
            "spawner aidp.engine._spawn was not built): an exec more per harness",
            fix="reinstall aidp where a C compiler and Python's headers are (make venv installs them)",
        )
    why = "turned off (AIDP_CGROUPS=0)" if os.environ.get("AIDP_CGROUPS") == "0" else "not available here"
    return Finding(
        level="warning",
        check="cgroups",
        message=f"cgroups {why}: cancel still ends each harness's process group and what carries its "
        "environment marker, but a process that both drops its environment and calls setsid may escape",
        fix="run aidp as root or in a delegated user cgroup (systemd-run --user --scope -p Delegate=yes aidp ...)"
        if why == "not available here"
        else "unset AIDP_CGROUPS",
    )


def _sandbox(config: Config | None) -> Finding:
    bwrap = shutil.which("bwrap")
    configured = config is not None and config.sandbox.kind == "bwrap"
    if configured and bwrap is None:
        return Finding(
            level="problem",
            check="sandbox",
            message='[sandbox] kind = "bwrap", but bubblewrap (bwrap) is not on PATH: every run ends `error`',
            fix='install bubblewrap (apt-get install bubblewrap), or set [sandbox] kind = "none"',
        )
    if configured:
        return Finding(level="ok", check="sandbox", message=f"harnesses run under bubblewrap ({bwrap})")
    if bwrap is None:
        return Finding(
            level="warning",
            check="sandbox",
            message="bubblewrap (bwrap) is not on PATH: harnesses run with your user's full rights",
            fix="install bubblewrap (apt-get install bubblewrap) to confine each harness to its worktree",
        )
    return Finding(
        level="ok",
        check="sandbox",
        message=f"bubblewrap found ({bwrap}), but harnesses run unconfined",
        fix='set [sandbox] kind = "bwrap" in .aidp/config.toml to confine each harness to its worktree',
    )
