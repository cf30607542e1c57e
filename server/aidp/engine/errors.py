"""Errors the engine raises on purpose. Each carries a message fit to show a person as is;
the adapters (CLI, server) map the classes to exit codes and JSON-RPC error codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aidp.engine.model import LandResult

FILES_SHOWN = 20  # files named in a refusal; the rest are counted


class AidpError(Exception):
    """Base class: a refusal or a problem the user can fix."""


class InvalidInput(AidpError):
    """A value that entered from outside was wrong (slug, option, param)."""


class InvalidSlug(InvalidInput):
    pass


class NotARepository(AidpError):
    pass


class ConfigError(AidpError):
    pass


class UnknownSlugs(InvalidInput):
    def __init__(self, unknown: list[str], hint: str = "see 'aidp ws list'") -> None:
        self.unknown = unknown
        noun = "workstream" if len(unknown) == 1 else "workstreams"
        super().__init__(f"unknown {noun}: {', '.join(unknown)} ({hint})")


class AlreadyExists(InvalidInput):
    pass


class Busy(AidpError):
    """A workstream is queued or running, or being created or removed (in this process or another)."""

    def __init__(self, running: list[str], action: str = "run", state: str = "already running") -> None:
        self.running = running
        super().__init__(f"cannot {action}: {state}: {', '.join(running)}")


class Refused(AidpError):
    """The operation would lose work or contradict state (paused, dirty worktree...)."""


class GitError(AidpError):
    pass


class CannotLand(Refused):
    """A workstream could not land (conflicting files, uncommitted changes, running, a dirty
    target worktree, a target branch moved meanwhile): nothing of it changed. `landed`: those of
    the same call that landed before it."""

    def __init__(
        self, slug: str, reason: str, files: list[str] | None = None, landed: list[LandResult] | None = None
    ) -> None:
        self.slug, self.reason, self.files, self.landed = slug, reason, files or [], landed or []
        more = [f"... and {len(self.files) - FILES_SHOWN} more"] if len(self.files) > FILES_SHOWN else []
        lines = [f"cannot land {slug}: {reason}" + (":" if self.files else "")]
        lines += [f"  {name}" for name in self.files[:FILES_SHOWN] + more]
        if self.landed:
            done = ", ".join(f"{r.slug} into {r.into} ({r.commit[:12]})" for r in self.landed)
            lines.append(f"landed before it: {done}")
        super().__init__("\n".join(lines))


class InvalidRef(InvalidInput, GitError):
    """A base branch that does not name exactly one commit: the user's input, so exit 2."""


class StateError(AidpError):
    """The state database is missing, damaged, or was replaced under this process: aidp refuses
    to go on (or to start an empty one over aidp's worktrees) and says how to recover."""


def refused_by_state(exc: Exception) -> StateError:
    """A write the state database refused (a full disk, an I/O error) that no one could work
    around, for a face to say in one line."""
    return StateError(f"the state database refused a write ({exc}): free some space, then try again")
