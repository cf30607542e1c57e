"""`aidp ws new --from FILE`: many workstreams at once, all checked before any is created, and
all or nothing (a failure part way removes the ones it had created).

The file is either lines `slug: task` (blank lines and `#` comments skipped), or, named `*.toml`,
one table per workstream: `[slug]` with `task`, and optionally `priority`, `after` (a list of
slugs, in the file or already there) and `command` (a string split like a shell would, or a list).
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from aidp.cli import ready
from aidp.cli.base import EXIT_OK
from aidp.cli.render import schedule_text
from aidp.engine import Engine
from aidp.engine.errors import AidpError, InvalidInput
from aidp.engine.model import parse_priority, validate_slug

KEYS = frozenset({"task", "priority", "after", "command"})


@dataclass
class Planned:
    slug: str
    task: str
    priority: int = 0
    after: list[str] = field(default_factory=list)
    command: list[str] | None = None


def read_plan(path: Path) -> list[Planned]:
    """The workstreams the file describes, each checked for form (errors name the line or table)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    plan = _from_toml(path, text) if path.suffix == ".toml" else _from_lines(path, text)
    if not plan:
        raise InvalidInput(f"{path} names no workstream")
    seen: set[str] = set()
    for item in plan:
        if item.slug in seen:
            raise InvalidInput(f"{path}: {item.slug} is named twice")
        seen.add(item.slug)
    return plan


def _from_lines(path: Path, text: str) -> list[Planned]:
    plan = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        slug, colon, task = line.partition(":")
        if not colon or not task.strip():
            raise InvalidInput(f"{path}:{number}: expected 'slug: task', got {line.strip()[:60]!r}")
        plan.append(Planned(_slug(f"{path}:{number}", slug.strip()), task.strip()))
    return plan


def _from_toml(path: Path, text: str) -> list[Planned]:
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
    plan = []
    for slug, table in tables.items():
        where = f"{path} [{slug}]"
        if not isinstance(table, dict):
            raise InvalidInput(f'{where}: expected a table with task = "..."')
        if unknown := sorted(set(table) - KEYS):
            raise InvalidInput(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
        task, after, command = table.get("task"), table.get("after", []), table.get("command")
        if not isinstance(task, str) or not task.strip():
            raise InvalidInput(f"{where}: task must be a non-empty string")
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise InvalidInput(f"{where}: after must be a list of slugs")
        try:
            priority = parse_priority(table.get("priority", 0))
            argv = shlex.split(command) if isinstance(command, str) else command
        except (InvalidInput, ValueError) as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
        if argv is not None and (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)):
            raise InvalidInput(f"{where}: command must be a string or a non-empty list of strings")
        plan.append(Planned(_slug(where, slug), task, priority, [_slug(where, a) for a in after], argv))
    return plan


def _slug(where: str, slug: str) -> str:
    try:
        return validate_slug(slug)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from exc


async def create_all(engine: Engine, path: Path) -> int:
    """Check everything first (form, names free, dependencies known), then create them; on a
    failure remove what this call created and say so."""
    plan = read_plan(path)
    existing = {ws.slug for ws in await engine.workstreams(changes=False)}
    planned = {item.slug for item in plan}
    if taken := sorted(planned & existing):
        raise InvalidInput(f"{path}: already workstreams: {', '.join(taken)}")
    for item in plan:
        if missing := [a for a in item.after if a not in planned | existing]:
            raise InvalidInput(f"{path}: {item.slug} runs after {', '.join(missing)}, which is no workstream")
    created: list[str] = []
    try:
        for item in plan:  # dependencies are set once all exist, so the file's order does not matter
            ws, _ = await engine.create_or_adopt(item.slug, item.task, None, item.command, priority=item.priority)
            created.append(ws.slug)
            print(f"created {ws.slug}: worktree {ws.path} on branch {ws.branch}", flush=True)
            print("".join(f"{line}\n" for line in ready.setup_lines(ws)), end="", flush=True)
        for item in plan:
            if item.after:
                ws = await engine.set_schedule(item.slug, None, item.after)
                print(f"{ws.slug}: {schedule_text(ws)}", flush=True)
    except AidpError as exc:
        for slug in reversed(created):
            await engine.remove(slug, delete_branch=True, force=True)
        undone = f"; removed again: {', '.join(created)}" if created else ""
        raise type(exc)(f"{exc}{undone} (nothing of {path} was created)") from exc
    return EXIT_OK
