"""The documentation is executed, so it cannot go stale.

Every ```console block of a page under docs/ is a run of shell examples: a line starting with `$ `
is a command (lines starting with `> ` right under it continue it, as the shell's second prompt
shows a here-document), the lines under it are its output. Each page's commands run in order in
one throwaway home directory holding a fresh repository `~/shop`, with a stand-in coding agent
named `claude` on PATH (the `claude-code` preset runs it), 160 columns wide (`COLUMNS`). A command
whose output the page shows must print that (its stdout and stderr together); one shown without
output must exit 0.

Output is compared after the same normalisation of both sides, so the pages can show real output:
clock times, durations (`0.2 s`), run ids, commit ids, pids and ISO timestamps are replaced by
placeholders, and the throwaway home directory is written `~`. A `...` inside a line matches any
text; a line that is only `...` matches any number of lines (for what runs in parallel)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from support import GIT_IDENTITY, git, make_repo

from aidp import docgen
from aidp.cli.parser import build_parser
from aidp.engine import config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
VENV_BIN = ROOT / ".venv" / "bin"
COMMAND_TIMEOUT_S = 120

# The stand-in for Claude Code (`claude -p TASK ...`): it does what the task's words say, so a page
# can show a failure ("fail"), a timeout ("slow"), a conflict (two tasks editing README.md).
FAKE_CLAUDE = r"""#!/bin/sh
task=$2
echo "claude: $task"
case "$task" in
  *slow*) sleep 60 ;;
  *fail*) echo "claude: giving up" >&2; exit 1 ;;
esac
case "$task" in
  *README*) file=README.md ;;
  *) file=notes/$AIDP_SLUG.md ;;
esac
mkdir -p "$(dirname "$file")"
echo "$task" >> "$file"
git add "$file"
git commit -q -m "$AIDP_SLUG: $task"
echo "claude: committed $file"
"""

NORMALISE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "TIMESTAMP"),
    (re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}"), "RUN-ID"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "HH:MM:SS"),
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"), "COMMIT"),
    (re.compile(r"\b\d+(\.\d+)? s\b"), "N s"),
    (re.compile(r"\bpid \d+"), "pid N"),
)


@dataclass
class Example:
    command: str
    output: list[str] = field(default_factory=list)
    line: int = 0  # where the command is in the page, for the failure message


def examples(page: Path) -> list[Example]:
    """The page's ```console examples, in order."""
    found: list[Example] = []
    inside = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip().startswith("```"):
            inside = line.strip() == "```console" if not inside else False
            continue
        if not inside:
            continue
        if line.startswith("$ "):
            found.append(Example(line[2:], line=number))
        elif found and not found[-1].output and (line.startswith("> ") or line == ">"):
            found[-1].command += "\n" + line[2:]
        elif found:
            found[-1].output.append(line)
    return found


def normalise(text: str, home: Path) -> str:
    text = text.replace(str(home), "~")
    for pattern, placeholder in NORMALISE:
        text = pattern.sub(placeholder, text)
    return text.rstrip()


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line, `...` within a line for any text and a lone `...` line for any lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[start:]) for start in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in expected[0].split("..."))
    return re.fullmatch(pattern, actual[0]) is not None and matches(expected[1:], actual[1:])


def pages() -> list[Path]:
    return sorted(page for page in DOCS.rglob("*.md") if examples(page))


def throwaway_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A home with the repository `~/shop` and the stand-in agent; the environment to run in."""
    home = tmp_path / "home"
    home.mkdir()
    make_repo(tmp_path).rename(home / "shop")
    (home / "shop" / "README.md").write_text("# Shop\n")
    git(home / "shop", "commit", "-q", "-am", "A README")
    (home / ".gitconfig").write_text(
        f"[user]\n\tname = {GIT_IDENTITY['GIT_AUTHOR_NAME']}\n\temail = {GIT_IDENTITY['GIT_AUTHOR_EMAIL']}\n"
    )
    agent = home / "bin" / "claude"
    agent.parent.mkdir()
    agent.write_text(FAKE_CLAUDE)
    agent.chmod(0o755)
    path = os.pathsep.join([str(agent.parent), str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"])
    # As wide as a roomy terminal, so tables are not cut to the 80 columns of an unknown width.
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8", "TERM": "dumb", "COLUMNS": "160", **GIT_IDENTITY}
    return home, env


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(DOCS)))
def test_page_examples_run_as_shown(page: Path, tmp_path: Path) -> None:
    home, env = throwaway_home(tmp_path)
    cwd = home
    where = tmp_path / "cwd"
    for example in examples(page):
        script = f"cd {shlex.quote(str(cwd))} || exit 99\n{example.command}\nrc=$?\npwd > {shlex.quote(str(where))}\n"
        done = subprocess.run(
            ["bash", "-c", script + "exit $rc"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        cwd = Path(where.read_text().strip())
        actual = normalise(done.stdout, home)
        context = f"{page.name}:{example.line}: $ {example.command}\n--- printed (exit {done.returncode}):\n{actual}"
        if example.output:
            expected = [normalise(line, home) for line in example.output]
            if not matches(expected, actual.splitlines()):
                pytest.fail(f"{context}\n--- the page shows:\n" + "\n".join(expected), pytrace=False)
        elif done.returncode != 0:
            pytest.fail(context, pytrace=False)


def test_matching_rule() -> None:
    """The rule the pages rely on: `...` inside a line and as a line of its own."""
    assert matches(["a ... c", "...", "z"], ["a b c", "x", "y", "z"])
    assert matches(["...", "z"], ["z"])
    assert not matches(["a", "z"], ["a", "b", "z"])
    assert not matches(["a ... c"], ["a b d"])
    home = Path("/tmp/h")
    assert normalise("[05:25:40] a completed (exit 0, 0.2 s) in /tmp/h/shop", home) == (
        "[HH:MM:SS] a completed (exit 0, N s) in ~/shop"
    )


def test_reference_pages_cover_every_command_and_key() -> None:
    """The generated reference holds every subcommand's --help and a row for every configuration key."""
    cli = docgen.cli_reference()
    commands = list(docgen.subcommands(build_parser()))
    assert {"aidp ws land", "aidp doctor", "aidp init"} <= {sub.prog for _, sub in commands}
    for _, sub in commands:
        assert f"## {sub.prog}\n" in cli and sub.format_usage().split()[1] in cli
    keys = docgen.config_reference()
    for section in msgspec.structs.fields(config.Config):
        assert f"## `[{section.name}]`" in keys
        for key in msgspec.structs.fields(type(section.default_factory())):
            assert f"| `{key.name}` |" in keys, (section.name, key.name)


def test_reference_pages_are_built_from_markers() -> None:
    """The pages hold markers the MkDocs hook replaces, never a hand-written copy."""
    assert "<!-- aidp:cli -->" in (DOCS / "reference" / "cli.md").read_text()
    assert "<!-- aidp:config -->" in (DOCS / "reference" / "config.md").read_text()
    assert docgen.on_page_markdown("x\n<!-- aidp:config -->\n") == "x\n" + docgen.config_reference() + "\n"


def test_the_benchmarks_page_ends_with_the_findings_kept_by_hand() -> None:
    """`docs/benchmarks.md`'s analysis is `bench/findings.md`, which every `python -m bench --docs`
    copies into the page: an edit made in the page alone would be lost at the next run."""
    page = (DOCS / "benchmarks.md").read_text()
    findings = (ROOT / "bench" / "findings.md").read_text().rstrip()
    assert page.rstrip().endswith(findings), "edit bench/findings.md, then copy it into docs/benchmarks.md"
