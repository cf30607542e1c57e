"""The engine: workstreams, durable state and the parallel executor. Knows nothing of JSON-RPC.

Every name here is imported on first use (PEP 562), so `from aidp.engine.model import ...` loads the
model alone (the server answers `initialize`, and the CLI parses its arguments, before the executor,
the store and git's helpers are imported), and `aidp.engine.listing` loads nothing but os: `aidp ws
list`'s fast path starts in a few milliseconds."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from typing import Any

    from aidp.engine.engine import Engine
    from aidp.engine.model import RunSummary, Status, Workstream, WorkstreamResult

__all__ = ["Engine", "RunSummary", "Status", "Workstream", "WorkstreamResult"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from aidp.engine.engine import Engine

        return Engine
    if name in __all__:
        from aidp.engine import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
