"""Project configuration: `.aidp/config.toml`, validated where it enters so a typo is a clear error
naming the field rather than a surprise in the middle of a run."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import msgspec

from aidp.engine import presets
from aidp.engine.errors import ConfigError

CONFIG_NAME = "config.toml"
DEFAULT_MAX_CONCURRENT = 3
DEFAULT_GRACE_S = 5.0
MIN_TIMEOUT_S = 0.1  # a shorter timeout cannot be told from a harness that ended on its own

PLACEHOLDERS = ("slug", "task", "task_file", "mode", "steps", "branch", "worktree")


Bound = Annotated[int, msgspec.Meta(ge=1, le=64)]
ExitCode = Annotated[int, msgspec.Meta(ge=1, le=255)]
Halt = Literal["never", "soon", "now"]
HALTS = ("never", "soon", "now")


class Harness(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The argv a workstream runs, never through a shell, with placeholders like {task}; wins over `preset`.
    command: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)] | None = None
    # A known agent's non-interactive command line (see presets.py); `command` wins over it.
    preset: str | None = None
    # Appended to the configured command (the preset's or `command`), not to a workstream's own.
    args_extra: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)
    # "task": the harness reads the task on its standard input; "none": stdin is /dev/null.
    stdin: Literal["none", "task"] = "none"
    timeout_s: Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)] | None = None  # a workstream running longer fails
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_GRACE_S  # between SIGTERM and SIGKILL
    # The older place of `[scheduler] max_concurrent`, still read when that is not set.
    max_concurrent: Bound | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)  # added to the harness's environment
    # Commit what the harness left uncommitted: many agents never commit, and only commits land.
    commit: Literal["never", "on-success", "always"] = "never"
    # Failure policy: how often a failed attempt is tried again, on which exit codes (empty: any
    # non-zero), after an exponential back-off with jitter starting at `retry_backoff_s`.
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 0
    retry_on_exit: list[ExitCode] = msgspec.field(default_factory=list)  # the exit codes worth a retry
    retry_on_timeout: bool = False  # also retry an attempt that timed out
    retry_backoff_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0  # the first back-off; doubles each time
    # An attempt that ends with one of these codes, or whose output matches the pattern, hit a rate
    # limit: it is retried after a back-off (not counted against `retries`) and the run slows down.
    rate_limit_exit: list[ExitCode] = msgspec.field(default_factory=list)
    rate_limit_pattern: Annotated[str, msgspec.Meta(min_length=1)] | None = None  # a regex on the output's end
    rate_limit_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10  # at most this many rate-limit retries
    # On the first failure: `soon` starts nothing new, `now` also cancels what runs (GNU parallel's --halt).
    halt: Halt = "never"

    @property
    def resolved_command(self) -> list[str] | None:
        """What runs: `command`, else the preset's command line, then `args_extra`."""
        base = self.command or (list(presets.PRESETS[self.preset].argv) if self.preset else None)
        return None if base is None else [*base, *self.args_extra]

    @property
    def output(self) -> str | None:
        """The structured stdout of the preset's agent (`presets.CLAUDE_STREAM_JSON`...), when the
        preset's command is the one that runs; None for a hand-written `command`."""
        return presets.PRESETS[self.preset].output if self.preset and not self.command else None


class Scheduler(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The repository's bound: how many harnesses run at once across every aidp process; "auto"
    # chooses it from the cores, the memory available and the peak memory recorded for past runs.
    max_concurrent: Bound | Literal["auto"] | None = None
    # Start a dependent's branch from its dependencies' work (their branches, merged if several).
    base_from_deps: bool = False
    # Expected durations come from this many of a workstream's (or a command's) latest runs.
    history_runs: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    # After a rate limit halved a run's concurrency, each calm stretch this long raises it by one.
    rate_limit_recover_s: Annotated[float, msgspec.Meta(ge=0.1)] = 60.0


Argv = Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
DEFAULT_WORKTREES_DIR = ".worktrees"
DEFAULT_SETUP_TIMEOUT_S = 1800.0
DEFAULT_HOOK_TIMEOUT_S = 30.0


class Worktree(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How each new worktree is made ready: `dir` is where worktrees go (relative to the repository
    root, or absolute; inside or outside the repository); `copy` names files of the main checkout
    (glob patterns relative to it, typically git-ignored ones like `.env`) copied into each;
    `setup` is a command run once in each (never through a shell), ended after `setup_timeout_s`."""

    dir: Annotated[str, msgspec.Meta(min_length=1)] = DEFAULT_WORKTREES_DIR
    copy: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)
    setup: Argv | None = None
    setup_timeout_s: Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)] = DEFAULT_SETUP_TIMEOUT_S


class Hooks(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Commands run (never through a shell) when a workstream ends (`on_end`) and when a run ends
    (`on_run_end`), with the result in placeholders and AIDP_* variables; ended after `timeout_s`."""

    on_end: Argv | None = None
    on_run_end: Argv | None = None
    timeout_s: Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)] = DEFAULT_HOOK_TIMEOUT_S


class Sandbox(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[sandbox]`: what a harness may write (see `sandbox`). Agents run with their permission
    prompts off, so the filesystem, not the agent, says what one workstream may touch."""

    kind: Literal["none", "bwrap"] = "none"  # "bwrap": each harness runs under bubblewrap
    # Extra read-write paths (agents keep credentials and caches in the home directory); `~` is
    # expanded when the file is read, and each must then be absolute.
    writable: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)
    hide_others: bool = False  # the main checkout and the other worktrees hidden, not just read-only
    network: bool = True  # agents call model APIs


class State(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[state]`: what `.aidp/state.db` and `.aidp/logs` keep. `keep_runs`: each workstream's
    latest runs kept (rows, events, log files); older ones are forgotten when a run ends, so a
    long-lived repository stays bounded. None keeps every run."""

    # Each workstream's latest runs kept; older runs' rows, events and log files go when a run ends.
    keep_runs: Annotated[int, msgspec.Meta(ge=1)] | None = None


ResourceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]


class Executor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[executor]`: where harnesses run. "local": on this machine. "ray": each running workstream
    in a Ray actor on a cluster (`pip install 'aidp[ray]'`), its branch shipped there and back."""

    # "local": harnesses run on this machine; "ray": on the Ray cluster of `address`.
    kind: Literal["local", "ray"] = "local"
    # The Ray cluster to join, as "host:port" of its head (the GCS port, 6379 by default); empty:
    # aidp starts a Ray instance of its own on 127.0.0.1 for as long as it runs, with Ray's token
    # authentication (see the security notes on running a cluster).
    address: str = ""
    # The custom resource a node offers per workstream slot (`ray start --resources '{"aidp_ws": 4}'`);
    # each running workstream takes one.
    slot_resource: ResourceName = "aidp_ws"
    # More resources each running workstream asks for, beside its slot (like {CPU = 1} or {GPU = 1}).
    resources: dict[ResourceName, Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(default_factory=dict)
    # A workstream that finds no node with its resources within this time ends `error`, naming them.
    placement_timeout_s: Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)] = 300.0
    # No sign of life from a running workstream's worker for this long: it ends `failed` (worker lost).
    heartbeat_timeout_s: Annotated[float, msgspec.Meta(ge=1)] = 60.0


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    harness: Harness = msgspec.field(default_factory=Harness)
    scheduler: Scheduler = msgspec.field(default_factory=Scheduler)
    sandbox: Sandbox = msgspec.field(default_factory=Sandbox)
    worktree: Worktree = msgspec.field(default_factory=Worktree)
    hooks: Hooks = msgspec.field(default_factory=Hooks)
    state: State = msgspec.field(default_factory=State)
    executor: Executor = msgspec.field(default_factory=Executor)

    @property
    def max_concurrent(self) -> int | Literal["auto"]:
        """The repository's bound: `[scheduler]`, else the older `[harness]` key, else the default."""
        return self.scheduler.max_concurrent or self.harness.max_concurrent or DEFAULT_MAX_CONCURRENT


def load_config(state_dir: Path) -> Config:
    path = state_dir / CONFIG_NAME
    if not path.exists():
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:  # a directory, no permission: still the config's fault, said as such
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for key in config.harness.env:
        if not key or "=" in key or "\0" in key:
            raise ConfigError(f"{path}: invalid environment variable name {key!r} in [harness] env")
    if config.harness.preset is not None and config.harness.preset not in presets.PRESETS:
        raise ConfigError(
            f"{path}: unknown [harness] preset {config.harness.preset!r}; the presets are {presets.names()}"
        )
    if config.harness.rate_limit_pattern is not None:
        try:
            re.compile(config.harness.rate_limit_pattern)
        except re.error as exc:
            raise ConfigError(f"{path}: [harness] rate_limit_pattern is not a valid regular expression: {exc}") from exc
    _check_worktree(path, config.worktree)
    if config.executor.kind == "ray" and config.sandbox.kind != "none":
        raise ConfigError(
            f'{path}: [sandbox] kind = "{config.sandbox.kind}" is for harnesses on this machine; '
            'with [executor] kind = "ray" each runs in a scratch clone on a cluster node instead'
        )
    config.sandbox.writable = [_writable(path, entry) for entry in config.sandbox.writable]
    return config


def _writable(path: Path, entry: str) -> str:
    """One `[sandbox] writable` entry, `~` expanded: an absolute path, never one bwrap would take
    relative to wherever aidp happens to run."""
    expanded = os.path.expanduser(entry)
    if "\0" in entry or not os.path.isabs(expanded):
        raise ConfigError(f"{path}: [sandbox] writable: {entry!r} is not an absolute path (or one starting with ~)")
    return os.path.normpath(expanded)


def _check_worktree(path: Path, worktree: Worktree) -> None:
    """Copy patterns stay inside the repository: relative, without `..`; the dir is a path."""
    if "\0" in worktree.dir:
        raise ConfigError(f"{path}: [worktree] dir must not contain a NUL character")
    for pattern in worktree.copy:
        parts = PurePosixPath(pattern).parts
        if PurePosixPath(pattern).is_absolute() or ".." in parts or "\0" in pattern:
            raise ConfigError(
                f"{path}: [worktree] copy pattern {pattern!r} must be relative to the repository root, "
                'without \'..\' (like ".env" or "config/local.*")'
            )
