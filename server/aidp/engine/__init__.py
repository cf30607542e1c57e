"""The engine: workstreams, durable state and the parallel executor. Knows nothing of JSON-RPC.

`Engine` is imported on first use (PEP 562), so `from aidp.engine.model import ...` loads the model
alone: the server answers `initialize`, and the CLI parses its arguments, before the executor,
the store and git's helpers are imported."""

from typing import TYPE_CHECKING, Any

from aidp.engine.model import RunSummary, Status, Workstream, WorkstreamResult

if TYPE_CHECKING:
    from aidp.engine.engine import Engine

__all__ = ["Engine", "RunSummary", "Status", "Workstream", "WorkstreamResult"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from aidp.engine.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
