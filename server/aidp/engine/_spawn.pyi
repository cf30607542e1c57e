"""Types of the native spawner (`_spawn.c`)."""

from collections.abc import Sequence

class SetupError(OSError):
    """The child failed before its exec: joining its cgroup, its session or stdio."""

def spawn(
    paths: Sequence[bytes],
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    cwd: bytes,
    stdin_fd: int,
    out_fd: int,
    cgroup_fd: int,
    /,
) -> int: ...
