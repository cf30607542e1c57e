"""Project configuration: `.aidp/config.toml`, validated where it enters so a typo is a clear error
naming the field rather than a surprise in the middle of a run."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from aidp.engine.errors import ConfigError

CONFIG_NAME = "config.toml"
DEFAULT_MAX_CONCURRENT = 3
DEFAULT_GRACE_S = 5.0
MIN_TIMEOUT_S = 0.1  # a shorter timeout cannot be told from a harness that ended on its own

PLACEHOLDERS = ("slug", "task", "mode", "steps", "branch", "worktree")


class Harness(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)] | None = None
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_GRACE_S
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=64)] = DEFAULT_MAX_CONCURRENT
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # Commit what the harness left uncommitted: many agents never commit, and only commits land.
    commit: Literal["never", "on-success", "always"] = "never"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    harness: Harness = msgspec.field(default_factory=Harness)


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
    return config
