"""The engine: workstreams, durable state and the parallel executor. Knows nothing of JSON-RPC."""

from aidp.engine.engine import Engine
from aidp.engine.model import RunSummary, Status, Workstream, WorkstreamResult

__all__ = ["Engine", "RunSummary", "Status", "Workstream", "WorkstreamResult"]
