"""What a workstream runs: the argv (placeholders substituted per argument, never through a shell),
its environment, and the spawn itself (own session, stdin closed, output straight into the log)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from aidp.engine.config import PLACEHOLDERS

_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class StartError(Exception):
    """The program could not be started; the message says what to fix."""


class CgroupJoinError(Exception):
    """The child could not move itself into its cgroup (it never ran the harness)."""


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
    argv: list[str], cwd: Path, env: dict[str, str], log_fd: int, before_exec: Callable[[], None] | None = None
) -> asyncio.subprocess.Process:
    """Start the harness in its own session (so cancel reaches its whole tree). The child writes
    into the log file itself: every byte is kept, and a flood costs the engine nothing.
    `before_exec` runs in the child before the harness (joining its cgroup)."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=before_exec,
        )
    except subprocess.SubprocessError as exc:  # raised only for a failing `before_exec`
        raise CgroupJoinError(str(exc)) from exc
    except FileNotFoundError as exc:
        if not cwd.is_dir():
            raise StartError(f"worktree {cwd} is missing; remove the workstream and create it again") from exc
        raise StartError(
            f"cannot start {argv[0]!r}: no such program (check [harness] command in .aidp/config.toml "
            "or the workstream's --command)"
        ) from exc
    except PermissionError as exc:
        raise StartError(f"cannot start {argv[0]!r}: permission denied (is it executable?)") from exc
    except OSError as exc:
        raise StartError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL or an unencodable character in an argument or the environment
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from exc
