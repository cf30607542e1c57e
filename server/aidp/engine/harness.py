"""What a workstream runs: the argv (placeholders substituted per argument, never through a shell),
its environment, and the spawn itself (own session, stdin closed, output straight into the log)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from aidp.engine.config import PLACEHOLDERS

_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class StartError(Exception):
    """The program could not be started; the message says what to fix."""


# Joins the cgroup in $1, then becomes the harness: a constant script, the harness's argv passed as
# arguments that the shell never parses. A `preexec_fn` would do the same without sh but makes
# Python fork instead of vfork: about 5 ms per spawn against 2 here (bench: containment).
_JOIN_THEN_EXEC = 'echo 0 > "$1/cgroup.procs" && shift && exec "$@"'


def build_argv(template: list[str], values: Mapping[str, str]) -> list[str]:
    """Substitute `{slug}`-style placeholders in one pass, so text that itself looks like a
    placeholder (a task mentioning `{slug}`) is never expanded twice. Other braces stay literal."""
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], arg) for arg in template]


def build_env(extra: Mapping[str, str], values: Mapping[str, str], run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(
        AIDP_SLUG=values["slug"],
        AIDP_TASK=values["task"],
        AIDP_MODE=values["mode"],
        AIDP_STEPS=values["steps"],
        AIDP_RUN_ID=run_id,
        AIDP_WORKTREE=values["worktree"],
    )
    return env


async def spawn(
    argv: list[str], cwd: Path, env: dict[str, str], log_fd: int, cgroup: Path | None = None
) -> asyncio.subprocess.Process:
    """Start the harness in its own session (so cancel reaches its whole tree) and, given one, in
    its cgroup before its first instruction. The child writes into the log file itself: every byte
    is kept, and a flood costs the engine nothing."""
    program = argv[0]
    try:
        if cgroup is not None:
            _check_program(program, cwd, env)  # through sh, a missing program would only be a log line
            argv = ["/bin/sh", "-c", _JOIN_THEN_EXEC, "aidp-join", str(cgroup), *argv]
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        if not cwd.is_dir():
            raise StartError(f"worktree {cwd} is missing; remove the workstream and create it again") from exc
        raise StartError(
            f"cannot start {program!r}: no such program (check [harness] command in .aidp/config.toml "
            "or the workstream's --command)"
        ) from exc
    except PermissionError as exc:
        raise StartError(f"cannot start {program!r}: permission denied (is it executable?)") from exc
    except OSError as exc:
        raise StartError(f"cannot start {program!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL or an unencodable character in an argument or the environment
        raise StartError(f"cannot start {program!r}: {exc}") from exc


def _check_program(program: str, cwd: Path, env: Mapping[str, str]) -> None:
    """Raise as exec would (FileNotFoundError, PermissionError) for a program that cannot run."""
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not path.exists():
            raise FileNotFoundError(program)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise PermissionError(program)
        return
    search = env.get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        raise (PermissionError if shutil.which(program, mode=os.F_OK, path=search) else FileNotFoundError)(program)
