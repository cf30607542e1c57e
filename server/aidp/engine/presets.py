"""Agent presets: `[harness] preset = "NAME"` stands for the agent's own non-interactive command
line with the task, so nobody has to look its flags up. Each preset names the version of the agent
and the page its flags were checked against; `[harness] command` still wins when given, and
`[harness] args_extra` appends to either.

Every preset lets the agent edit files in its worktree without asking (nobody is there to answer)
and leaves anything broader (network, commands outside the worktree) to the agent's own default;
`args_extra` widens or narrows that."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

# The formats a preset's agent writes on stdout that aidp can turn into progress (engineer C's
# progress reader keys on these constants, through `Preset.output`).
CLAUDE_STREAM_JSON = "claude-stream-json"


@dataclass(frozen=True)
class Preset:
    name: str  # what `[harness] preset` says
    title: str  # what a person calls the agent
    argv: tuple[str, ...]  # with placeholders, as `[harness] command`
    version: str  # the agent's version whose documentation the flags were checked against
    source: str  # where they were checked
    output: str | None = None  # a structured stdout aidp reads for progress, or None for plain text

    @property
    def program(self) -> str:
        return self.argv[0]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # `-p` (print) runs once and exits; stream-json (one JSON event a line, which needs
        # --verbose in print mode) lets aidp show the current tool and file as progress.
        Preset(
            name="claude-code",
            title="Claude Code",
            argv=(
                "claude",
                "-p",
                "{task}",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "acceptEdits",
            ),
            version="2.1.x",
            source="https://docs.anthropic.com/en/docs/claude-code/cli-reference",
            output=CLAUDE_STREAM_JSON,
        ),
        # `codex exec` is the non-interactive mode; its default sandbox is read-only, and
        # `--sandbox workspace-write` (the replacement of the deprecated --full-auto) lets it edit.
        Preset(
            name="codex",
            title="OpenAI Codex CLI",
            argv=("codex", "exec", "--sandbox", "workspace-write", "{task}"),
            version="0.77+ (docs of 2026)",
            source="https://developers.openai.com/codex/noninteractive",
        ),
        # `--message-file` does the one message and exits, and reads it from a file: no argv limit.
        Preset(
            name="aider",
            title="Aider",
            argv=("aider", "--yes-always", "--message-file", "{task_file}"),
            version="docs of 2026 (the page names no version)",
            source="https://aider.chat/docs/scripting.html",
        ),
        # `-p` is headless mode; `--approval-mode auto_edit` approves edits without a prompt.
        Preset(
            name="gemini",
            title="Gemini CLI",
            argv=("gemini", "--approval-mode", "auto_edit", "-p", "{task}"),
            version="docs of 2026 (the page names no version)",
            source="https://geminicli.com/docs/cli/headless/",
        ),
        # `opencode run` sends one message, prints the reply and exits.
        Preset(
            name="opencode",
            title="opencode",
            argv=("opencode", "run", "{task}"),
            version="1.15",
            source="https://opencode.ai/docs/cli/commands/",
        ),
        # `goose run` runs a session to the end and exits; `-i FILE` reads the instructions from a file.
        Preset(
            name="goose",
            title="goose",
            argv=("goose", "run", "-i", "{task_file}"),
            version="1.21",
            source="https://block.github.io/goose/docs/guides/running-tasks",
        ),
    )
}


def names() -> str:
    return ", ".join(PRESETS)


def detect(path: str | None = None) -> list[Preset]:
    """The presets whose agent is on PATH (or on `path`), in the order of `PRESETS`."""
    return [p for p in PRESETS.values() if shutil.which(p.program, path=path) is not None]


def config_text(preset: Preset | None) -> str:
    """A commented `.aidp/config.toml` for `preset`, or, with none, a template saying how to set
    `command` (every preset listed, commented out)."""
    head = [
        "# aidp configuration (written by `aidp init`; every key: docs/reference/config.md).",
        "# Placeholders in the command: {slug} {task} {task_file} {mode} {steps} {branch} {worktree}.",
        '# {task_file} names a file holding the task: use it (or stdin = "task") for tasks too long for the',
        "# command line (over 128 KiB).",
        "",
        "[harness]",
    ]
    if preset is None:
        body = [
            "# No known agent was found on PATH. Set the command aidp runs in each worktree, e.g.:",
            '# command = ["my-agent", "--task", "{task}"]',
            "# or pick a preset (then `command` is not needed):",
            *(f'# preset = "{p.name}"  # {p.title}: {_shown(p)}' for p in PRESETS.values()),
        ]
    else:
        body = [
            f"# {preset.title}: {_shown(preset)}",
            f"# (flags checked against {preset.title} {preset.version}: {preset.source})",
            f'preset = "{preset.name}"',
            "# Arguments appended to the preset's command, e.g. a model:",
            '# args_extra = ["--model", "MODEL"]',
            "# Or write the whole command yourself; it wins over the preset:",
            f"# command = {_toml_list(preset.argv)}",
        ]
    tail = [
        '# Feed the task on standard input (else stdin is /dev/null): stdin = "task"',
        "# Stop a workstream after this many seconds: timeout_s = 3600",
        '# Commit what the agent left uncommitted when it succeeds: commit = "on-success"',
        "",
        "# Confine each harness to its worktree with bubblewrap ('aidp doctor' says whether it is installed):",
        "# [sandbox]",
        '# kind = "bwrap"',
        "",
    ]
    return "\n".join([*head, *body, *tail])


def _shown(preset: Preset) -> str:
    return " ".join(preset.argv)


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"
