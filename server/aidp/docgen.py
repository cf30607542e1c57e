"""The documentation's reference pages, generated from the code they describe: the CLI from the
argument parser and the configuration keys from the config schema's Structs (their types, defaults
and the comments above each field). mkdocs.yml names this module as a hook: `on_page_markdown`
puts them into the site at build time, so the reference can never drift from the program."""

from __future__ import annotations

import argparse
import inspect
import os
import re
from collections.abc import Iterator

import msgspec
import msgspec.inspect as mi

from aidp.cli.parser import build_parser
from aidp.engine import config

HELP_COLUMNS = "100"  # argparse wraps to $COLUMNS: fixed, so the page is the same on every machine


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(help line, parser) of each subcommand, depth first, in the parser's own order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield helps.get(name, ""), sub
                yield from subcommands(sub)


def cli_reference() -> str:
    """Markdown: `aidp --help`, then each subcommand's heading, one-line purpose and full --help."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = build_parser()
        sections = [f"## {parser.prog}\n\n```text\n{parser.format_help().rstrip()}\n```"]
        for purpose, sub in subcommands(parser):
            sections.append(f"## {sub.prog}\n\n{purpose.capitalize()}.\n\n```text\n{sub.format_help().rstrip()}\n```")
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n\n".join(sections) + "\n"


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" ≥ {low}"
    return "" if high is None else f" ≤ {high}"


def _plural(text: str) -> str:
    """`strings`; a qualified type stays whole: `(integer from 1 to 255)`."""
    return f"{text}s" if " " not in text else f"({text})"


def type_text(info: mi.Type) -> str:
    """A schema type as a reader says it: `integer from 1 to 64`, `list of strings`, `"a" | "b"`."""
    if isinstance(info, mi.UnionType):
        return " or ".join(type_text(t) for t in info.types if not isinstance(t, mi.NoneType))
    if isinstance(info, mi.LiteralType):
        return " or ".join(f'`"{value}"`' for value in info.values)
    if isinstance(info, mi.IntType):
        return "integer" + _bounds(info.ge, info.le)
    if isinstance(info, mi.FloatType):
        return "seconds" + _bounds(info.ge, info.le)
    if isinstance(info, mi.StrType):
        return "string"
    if isinstance(info, mi.BoolType):
        return "boolean"
    if isinstance(info, mi.ListType):
        return f"list of {_plural(type_text(info.item_type))}"
    if isinstance(info, mi.DictType):
        return f"table of {_plural(type_text(info.value_type))}"
    raise TypeError(f"no wording for {info!r}: add it to aidp.docgen.type_text")


def default_text(field: mi.Field) -> str:
    """The default as it would be written in TOML; `unset` when the key has none."""
    value = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
    if value is None:
        return "unset"
    return msgspec.json.encode(value).decode().replace(",", ", ")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment: the `#` lines right above it and a trailing `# ...` on its line."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"    (\w+): ", line)
        if match:
            trailing = line.partition("  # ")[2]
            text = " ".join([*above, trailing]).strip()
            comments[match.group(1)] = text[:1].upper() + text[1:]
        above = []
    return comments


def config_reference() -> str:
    """Markdown: one section per table of `.aidp/config.toml`, a row per key."""
    sections = []
    schema = mi.type_info(config.Config)
    assert isinstance(schema, mi.StructType)
    for section in schema.fields:
        struct = section.type
        assert isinstance(struct, mi.StructType)
        cls = struct.cls
        comments = field_comments(cls)
        doc = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
        rows = [
            f"| `{f.name}` | {type_text(f.type)} | `{default_text(f)}` | {comments.get(f.name, '')} |"
            for f in struct.fields
        ]
        header = [f"## `[{section.name}]`", "", *([doc, ""] if doc else [])]
        sections.append("\n".join([*header, "| key | type | default | meaning |", "|---|---|---|---|", *rows]))
    return "\n\n".join(sections) + "\n"


MARKERS = {"<!-- aidp:cli -->": cli_reference, "<!-- aidp:config -->": config_reference}


def on_page_markdown(markdown: str, **_: object) -> str:
    """The MkDocs hook (mkdocs.yml `hooks`): each marker becomes the page it stands for."""
    for marker, generate in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
