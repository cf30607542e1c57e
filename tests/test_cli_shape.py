"""The CLI's shape (issue 12, item 5): imports run one way, and every command the parser knows is
wired to exactly one handler, so a command added to one side only is caught here."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from aidp.cli import wiring
from aidp.cli.parser import build_parser

CLI = Path(wiring.__file__).parent


def _imports(module: Path) -> set[str]:
    """The aidp.cli modules `module` imports (by name), at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "aidp.cli":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aidp.cli."):
            found.add((node.module or "").removeprefix("aidp.cli."))
    return found


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_cli_imports_form_no_circle() -> None:
    graph = {path.stem: _imports(path) for path in CLI.glob("*.py")}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())
    assert graph["base"] == set(), "base.py is the bottom: it imports nothing of the CLI"
    assert graph["parser"] == {"base"}, "the grammar knows no handler"


def test_every_command_has_one_handler() -> None:
    top = _choices(build_parser())
    assert set(_choices(top["ws"])) == set(wiring.WS)
    assert set(top) - {"ws"} == set(wiring.TOP)
