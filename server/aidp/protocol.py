"""The JSON-RPC contract, defined once: method names, request params, results and notifications.

Mirrored by `client-vscode/src/protocol.ts` and described in `docs/protocol.md`. Records that the
engine also produces (Workstream, WorkstreamResult, RunSummary) are the engine's own Structs.
Every incoming payload is validated with `msgspec.convert(params, <Params>)`, so errors name the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from aidp.engine.config import MIN_TIMEOUT_S
from aidp.engine.events import RunProgress, StatusChanged
from aidp.engine.model import (
    PRIORITY_RANGE,
    ConflictReport,
    Diff,
    LandResult,
    Record,
    RunSummary,
    SyncResult,
    Workstream,
    WorkstreamResult,
)

if TYPE_CHECKING:
    from aidp.engine.doctor import DoctorReport, Finding

# The status and progress notifications are the engine's own events, forwarded unchanged.
WsStatusNotification = StatusChanged
RunProgressNotification = RunProgress

__all__ = [
    "ConflictReport",
    "Diff",
    "DoctorReport",
    "Finding",
    "RunProgressNotification",
    "RunSummary",
    "SyncResult",
    "Workstream",
    "WorkstreamResult",
    "WsOutputNotification",
    "WsStatusNotification",
]


def __getattr__(name: str) -> Any:
    """`aidp/doctor`'s records, imported on first use: the doctor imports the whole engine, and
    the server answers `initialize` with this module loaded (PEP 562)."""
    if name in ("DoctorReport", "Finding"):
        from aidp.engine import doctor

        return getattr(doctor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


WS_RUN = "aidp/wsRun"
WS_RUN_ALL = "aidp/wsRunAll"
WS_LIST = "aidp/wsList"
WS_NEW = "aidp/wsNew"
WS_REMOVE = "aidp/wsRemove"
WS_PAUSE = "aidp/wsPause"
WS_RESUME = "aidp/wsResume"
WS_CANCEL = "aidp/wsCancel"
WS_LOG = "aidp/wsLog"
WS_DIFF = "aidp/wsDiff"
WS_CONFLICTS = "aidp/wsConflicts"
WS_LAND = "aidp/wsLand"
WS_SYNC = "aidp/wsSync"
DOCTOR = "aidp/doctor"
WS_SET = "aidp/wsSet"
WS_SETUP = "aidp/wsSetup"

WS_STATUS = "aidp/wsStatus"
WS_OUTPUT = "aidp/wsOutput"
WS_LIST_CHANGED = "aidp/wsListChanged"
WS_UPDATED = "aidp/wsUpdated"
RUN_PROGRESS = "aidp/runProgress"

# JSON-RPC error codes beyond the standard ones.
SERVER_BUSY = -32002
REQUEST_FAILED = -32803
CANNOT_LAND = -32010  # data: {slug, reason, files, landed}; nothing of that slug changed

Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
MaxConcurrent = Annotated[int, msgspec.Meta(ge=1, le=64)]
Timeout = Annotated[float, msgspec.Meta(ge=MIN_TIMEOUT_S)]
# A level's name or an integer; the engine stores the integer (`aidp.engine.model.PRIORITIES`).
Priority = Literal["high", "normal", "low"] | Annotated[int, msgspec.Meta(ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])]
Halt = Literal["never", "soon", "now"]


class Params(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Base for request params: camelCase, unknown fields are an error (a typo never goes unnoticed)."""


class RunOptions(Params):
    max_concurrent: MaxConcurrent | None = None
    mode: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "execute"
    steps: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    timeout_s: Timeout | None = None
    halt: Halt | None = None  # default: [harness] halt
    base_from_deps: bool | None = None  # default: [scheduler] base_from_deps


class WsRunParams(RunOptions, kw_only=True):
    slugs: Annotated[list[Slug], msgspec.Meta(min_length=1)]
    no_deps: bool = False  # refuse, rather than pull in, dependencies that are not done


class WsRunAllParams(RunOptions):
    pass


class EmptyParams(Params):
    pass


class WsNewParams(Params):
    slug: Slug
    task: Annotated[str, msgspec.Meta(min_length=1)]
    base_branch: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    command: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    priority: Priority = "normal"
    after: list[Slug] | None = None


class WsSetParams(Params):
    """None leaves a field as it is; `after: []` drops every dependency."""

    slug: Slug
    priority: Priority | None = None
    after: list[Slug] | None = None


class WsRemoveParams(Params):
    slug: Slug
    delete_branch: bool = False
    force: bool = False


class SlugParams(Params):
    slug: Slug


class WsCancelParams(Params):
    slugs: list[Slug] | None = None
    run_id: str | None = None


class WsLogParams(Params):
    slug: Slug
    tail_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None


class WsDiffParams(Params):
    slug: Slug
    base: Annotated[str, msgspec.Meta(min_length=1)] | None = None  # default: the workstream's base branch
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None  # bound on each patch (default 1 MiB)


class WsConflictsParams(Params):
    slugs: list[Slug] | None = None  # default: every workstream not landed


class WsLandParams(Params):
    slugs: Annotated[list[Slug], msgspec.Meta(min_length=1)]
    strategy: Literal["merge", "squash", "rebase"] = "merge"
    into: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    rm: bool = False


class WsSyncParams(Params):
    slug: Slug
    strategy: Literal["rebase", "merge"] = "rebase"


class WsLandResult(Record):
    landed: list[LandResult]


class WsListResult(Record):
    workstreams: list[Workstream]


class WsCancelResult(Record):
    cancelled: list[str]


class WsLogResult(Record):
    slug: str
    log_path: str | None
    text: str


class WsUpdatedNotification(Record):
    """Workstreams whose records changed, as `aidp/wsList` would give them now (see docs/protocol.md)."""

    workstreams: list[Workstream]


class WsOutputNotification(Record):
    """Live output; skipped output appears in `text` as a visible marker (see docs/protocol.md)."""

    run_id: str
    slug: str
    text: str


# -- the LSP lifecycle: as much of it as aidp speaks ---------------------------------------------
# aidp is no language server: it answers these itself (`aidp.server.lifecycle`), so the LSP's type
# library (lsprotocol, about a thousand classes) is never needed to start or to report progress.

INITIALIZE = "initialize"
INITIALIZED = "initialized"
SHUTDOWN = "shutdown"
EXIT = "exit"
CANCEL_REQUEST = "$/cancelRequest"
PROGRESS = "$/progress"
WORK_DONE_PROGRESS_CREATE = "window/workDoneProgress/create"


class Lsp(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base for LSP's own messages: camelCase, unknown fields ignored (clients send many)."""


class WorkspaceFolder(Lsp):
    uri: str
    name: str = ""


class WindowClientCapabilities(Lsp):
    work_done_progress: bool = False


class AidpClientCapabilities(Lsp):
    """What an aidp client declares it takes, beyond LSP (under `capabilities.experimental.aidp`)."""

    ws_updated: bool = False  # `aidp/wsUpdated` after a run's end, in place of `aidp/wsListChanged`


class ExperimentalCapabilities(Lsp):
    aidp: AidpClientCapabilities | None = None


class ClientCapabilities(Lsp):
    window: WindowClientCapabilities | None = None
    experimental: ExperimentalCapabilities | None = None


class InitializeParams(Lsp):
    process_id: int | None = None
    root_uri: str | None = None
    workspace_folders: list[WorkspaceFolder] | None = None
    capabilities: ClientCapabilities = msgspec.field(default_factory=ClientCapabilities)


class ServerInfo(Lsp):
    name: str
    version: str


class InitializeResult(Lsp):
    """`capabilities` is empty: no LSP feature is offered, everything aidp does is a custom method."""

    capabilities: dict[str, Any]
    server_info: ServerInfo


class CancelParams(Lsp):
    id: int | str


class WorkDoneProgressCreateParams(Lsp):
    token: str


class WorkDoneProgressBegin(Lsp, tag_field="kind", tag="begin"):
    title: str
    percentage: int | None = None
    cancellable: bool = False


class WorkDoneProgressReport(Lsp, tag_field="kind", tag="report"):
    message: str | None = None
    percentage: int | None = None


class WorkDoneProgressEnd(Lsp, tag_field="kind", tag="end"):
    message: str | None = None


class ProgressParams(Lsp):
    token: str
    value: WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd
