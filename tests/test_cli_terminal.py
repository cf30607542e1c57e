"""The live view on a real pseudo-terminal of a fixed size, read back through a terminal emulator
(pyte): whatever the harnesses print and however many workstreams run, every frame fits the
window (cells, not characters: wide CJK and emoji included), so nothing is ever repeated into
the scrollback."""

from __future__ import annotations

import re
from pathlib import Path

from cli_helpers import Terminal, gated, harness, new_ws
from support import make_repo

WIDE = "進捗状況を報告します🚀✅ " * 8  # far wider than the window, in double-width cells

GATED_WIDE = f"""\
import pathlib, sys, time
print({WIDE!r} + sys.argv[1], flush=True)
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.05)
"""


def test_many_workstreams_with_wide_output_fit_a_small_window(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = tmp_path / "gate"
    command = harness(tmp_path, "wide", GATED_WIDE) + f" {gate}"
    slugs = [f"ws-{n:02d}" for n in range(25)]
    for slug in slugs:
        new_ws(repo, slug, command, task="番号 " + slug)
    term = Terminal(repo, "ws", "run", *slugs, "--max-concurrent", "3", columns=60, rows=15)

    def running_rows_shown() -> bool:
        screen = term.display()
        return bool(re.search(r"\+\d+ more: \d+ queued", screen)) and screen.count("running ") >= 3 and "進捗" in screen

    assert term.read(until=running_rows_shown)
    screen = [line.rstrip() for line in term.screen.display]
    assert len(screen) == 15
    assert re.match(r"0/25 done · 3 running · 22 queued · elapsed ", screen[0]), screen[0]
    assert re.match(r"⏳ ws-\d\d\s+running\s+[\d.]+ s  進捗状況を報告します🚀✅ 進捗", screen[1]), screen[1]
    assert re.match(r"\+13 more: 13 queued$", screen[13]), screen  # 12 rows fit between header and fold
    gate.touch()
    assert term.close() == 0

    lines = term.lines()
    for slug in slugs:  # once in the last frame at most, once in the summary: never copies of the frame
        assert sum(slug in line for line in lines) <= 2, "\n".join(lines)
    assert "25 completed, 0 failed, 0 errored, 0 cancelled of 25" in "\n".join(lines)


def test_repl_on_a_terminal_edits_completes_remembers_and_prints_above_the_prompt(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = tmp_path / "gate"
    new_ws(repo, "slow-one", harness(tmp_path, "gated", gated(gate, "started", "finished")))
    # A real terminal answers prompt_toolkit's cursor-position queries; the emulator here does not.
    term = Terminal(repo, "repl", env={"PROMPT_TOOLKIT_NO_CPR": "1"})
    assert term.read(until=lambda: "aidp>" in term.display())

    term.write("/ws li\t")  # completion of the subcommand
    assert term.read(until=lambda: "aidp> /ws list" in term.display())
    term.write("\r")
    assert term.read(until=lambda: re.search(r"^slow-one\s+active", term.display(), re.M) is not None)

    term.write("ws list\r")  # without its slash: a hint
    assert term.read(until=lambda: "try '/ws list'" in term.display())

    term.write("/ws run slo\t")  # a slug completes too
    assert term.read(until=lambda: "aidp> /ws run slow-one" in term.display())
    term.write("\r")
    assert term.read(until=lambda: "slow-one running" in term.display())
    term.write("/ws sta")  # typing, not sent, while the run ends in the background
    gate.touch()

    def typed_line_redrawn_below_the_summary() -> bool:
        screen = [line.rstrip() for line in term.screen.display if line.strip()]
        return "1 completed, 0 failed" in term.display() and screen[-1] == "aidp> /ws sta"

    # The output goes above, and the line being typed is drawn again, intact, below it.
    assert term.read(until=typed_line_redrawn_below_the_summary), term.display()
    term.write("\x15")  # Ctrl-U: clear the line (line editing)
    term.write("\x1b[A")  # Up: the previous command from the history
    assert term.read(until=lambda: term.display().rstrip().endswith("aidp> /ws run slow-one"))
    term.write("\x15/ws run --max-c\t")  # options complete too
    assert term.read(until=lambda: term.display().rstrip().endswith("aidp> /ws run --max-concurrent"))
    term.write("\x15\x04")  # Ctrl-D on an empty line: leave
    assert term.close() == 0
    assert "/ws run slow-one" in (repo / ".aidp" / "repl_history").read_text()


PROGRESSING = """\
import json, os, pathlib, sys, time
gates = pathlib.Path(sys.argv[2])
for i, report in enumerate([{"percent": 40, "step": "IMPLEMENTATION"}, {"step": "REVIEW", "message": "reading"}]):
    with open(os.environ["AIDP_PROGRESS"], "a") as f:
        f.write(json.dumps(report) + "\\n")
    while not (gates / str(i)).exists():
        time.sleep(0.02)
"""


def test_live_view_draws_a_progress_bar_or_the_step_and_message(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gates = tmp_path / "gates"
    gates.mkdir()
    new_ws(repo, "busy", harness(tmp_path, "progressing", PROGRESSING) + f" {gates}")
    term = Terminal(repo, "ws", "run", "busy", columns=70, rows=10)
    bar = r"⏳ busy\s+running\s+[\d.]+ s  ━━━━━─+  40% · IMPLEMENTATION"  # 12 cells, 40% of them filled
    assert term.read(until=lambda: re.search(bar, term.display()) is not None)
    (gates / "0").touch()
    assert term.read(
        until=lambda: re.search(r"⏳ busy\s+running\s+[\d.]+ s  REVIEW: reading", term.display()) is not None
    )
    term.resize(40, 10)  # narrower: the next frames are measured again and cut with '…', not wrapped

    def cut_to_the_new_width() -> bool:
        lines = [line.rstrip() for line in term.screen.display if line.strip()]
        return any(line.startswith("0/1 done · 1 running") and line.endswith("…") for line in lines) and any(
            line.startswith("⏳ busy") and line.endswith("…") for line in lines
        )

    assert term.read(until=cut_to_the_new_width)
    (gates / "1").touch()
    assert term.close() == 0


def test_no_color_and_no_emoji_on_a_terminal_when_asked(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "plain", harness(tmp_path, "ok", "print('ok')\n"))
    for argv, env in ((("ws", "run", "plain"), {"NO_COLOR": "1"}), (("--no-color", "ws", "run", "plain"), {})):
        term = Terminal(repo, *argv, env=env)
        assert term.close() == 0
        text = term.raw.decode()
        assert "✅" not in text and "⏳" not in text, text
        assert not re.search(r"\x1b\[[0-9;]*3[0-9]m", text), text  # no foreground colour
        assert re.search(r"^- plain\s+completed", "\n".join(term.lines()), re.M)
    coloured = Terminal(repo, "ws", "run", "plain")
    assert coloured.close() == 0
    assert "✅ plain" in "\n".join(coloured.lines())
