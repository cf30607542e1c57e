"""Unit tests of `.aidp/config.toml` loading: defaults, values, and errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidp.engine.config import DEFAULT_GRACE_S, DEFAULT_MAX_CONCURRENT, load_config
from aidp.engine.errors import ConfigError


def _load(tmp_path: Path, text: str) -> object:
    (tmp_path / "config.toml").write_text(text)
    return load_config(tmp_path)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    harness = config.harness
    assert harness.command is None and harness.timeout_s is None and harness.env == {}
    assert (config.max_concurrent, harness.grace_s) == (DEFAULT_MAX_CONCURRENT, DEFAULT_GRACE_S)
    assert (harness.retries, harness.halt, config.scheduler.base_from_deps) == (0, "never", False)


def test_values(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[harness]\ncommand = ["claude", "-p", "{task}"]\ntimeout_s = 600\ngrace_s = 0\n'
        'max_concurrent = 8\nenv = { KEY = "v" }\n'
    )
    harness = load_config(tmp_path).harness
    assert harness.command == ["claude", "-p", "{task}"]
    assert (harness.timeout_s, harness.grace_s, harness.max_concurrent) == (600, 0, 8)
    assert harness.env == {"KEY": "v"}


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("")
    assert load_config(tmp_path).max_concurrent == DEFAULT_MAX_CONCURRENT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[harness]\nmax_concurrent = 0\n", "max_concurrent"),
        ("[harness]\nmax_concurrent = 65\n", "max_concurrent"),
        ("[harness]\nmax_concurrent = 2.5\n", "max_concurrent"),
        ("[harness]\nmax_concurrent = true\n", "max_concurrent"),
        ("[harness]\ntimeout_s = 0\n", "timeout_s"),
        ('[harness]\ngrace_s = "5"\n', "grace_s"),
        ("[harness]\ncommand = []\n", "command"),
        ('[harness]\ncommand = [""]\n', "command"),
        ("[harness]\ncommand = [1]\n", "command"),
        ("[harness]\nunknown = 1\n", "unknown"),
        ("other = 1\n", "other"),
        ("harness = 1\n", "harness"),
        ('[harness]\nenv = { "" = "x" }\n', "environment variable"),
        ('[harness]\nenv = { "A=B" = "x" }\n', "A=B"),
        ("[harness]\nenv = { A = 1 }\n", "env"),
        ("[harness\n", "not valid TOML"),
        ('[sandbox]\nkind = "docker"\n', "kind"),
        ('[sandbox]\nwritable = "~/.claude"\n', "writable"),
        ('[sandbox]\nwritable = ["relative/dir"]\n', "'relative/dir' is not an absolute path"),
        ('[sandbox]\nwritable = ["~nosuchuser/x"]\n', "'~nosuchuser/x' is not an absolute path"),
        ('[sandbox]\nwritable = [""]\n', "writable"),
        ('[sandbox]\nnetwork = "no"\n', "network"),
        ("[sandbox]\nhide = true\n", "hide"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert expected in message and str(tmp_path / "config.toml") in message


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b'[harness]\ncommand = ["\xff"]\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path)


def test_sandbox_defaults_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = load_config(tmp_path).sandbox
    assert (sandbox.kind, sandbox.writable, sandbox.hide_others, sandbox.network) == ("none", [], False, True)
    monkeypatch.setenv("HOME", "/home/agent")
    (tmp_path / "config.toml").write_text('[sandbox]\nkind = "bwrap"\nwritable = ["~/.claude", "/var/cache/x/"]\n')
    assert load_config(tmp_path).sandbox.writable == ["/home/agent/.claude", "/var/cache/x"]
