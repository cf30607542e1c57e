"""How a running harness's progress reads in the terminal (the plain view, `ws list`, `ws status`)."""

from __future__ import annotations

from aidp.engine.model import Progress


def progress_text(progress: Progress | None) -> str:
    """'40% IMPLEMENTATION: tests pass': what a running harness last said of its progress."""
    if progress is None:
        return ""
    percent = "" if progress.percent is None else f"{progress.percent:g}%"
    head = " ".join(part for part in (percent, progress.step or "") if part)
    if head and progress.message:
        return f"{head}: {progress.message}"
    return head or progress.message or ""
