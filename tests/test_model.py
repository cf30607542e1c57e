"""Unit tests of the engine's records: slug validation and run summaries on the wire."""

from __future__ import annotations

import msgspec
import pytest

from aidp.engine.errors import Busy, InvalidSlug, UnknownSlugs
from aidp.engine.model import RunSummary, Status, WorkstreamResult, validate_slug


@pytest.mark.parametrize("slug", ["a", "fix-login-42", "0", "a-b-c", "x" * 64])
def test_good_slugs(slug: str) -> None:
    assert validate_slug(slug) == slug


@pytest.mark.parametrize(
    "slug", ["", "A", "a b", "-a", "a-", "a--b", "a_b", "a/b", "..", "a.b", "x" * 65, "é", "a\n", None, 1]
)
def test_bad_slugs(slug: object) -> None:
    with pytest.raises(InvalidSlug):
        validate_slug(slug)


def test_long_slug_message_is_short() -> None:
    with pytest.raises(InvalidSlug, match="the limit is 64") as info:
        validate_slug("x" * 10_000)
    assert len(str(info.value)) < 200


def test_run_summary_counts_and_camel_case() -> None:
    results = [
        WorkstreamResult(slug="a", status=Status.COMPLETED, exit_code=0),
        WorkstreamResult(slug="b", status=Status.FAILED, exit_code=1),
        WorkstreamResult(slug="c", status=Status.ERROR, error="no command"),
        WorkstreamResult(slug="d", status=Status.CANCELLED),
    ]
    summary = RunSummary.of("r1", results, 1.23456)
    assert (summary.total, summary.completed, summary.failed, summary.errored, summary.cancelled) == (4, 1, 1, 1, 1)
    assert summary.wall_s == 1.235 and not summary.ok
    wire = msgspec.to_builtins(summary)
    assert wire["runId"] == "r1" and wire["wallS"] == 1.235
    assert wire["results"][0]["exitCode"] == 0 and "exit_code" not in wire["results"][0]
    assert msgspec.convert(wire, RunSummary) == summary
    empty = RunSummary.of("r2", [], 0)
    assert empty.total == 0 and empty.ok


def test_status_in_flight() -> None:
    assert {s for s in Status if s.in_flight} == {Status.QUEUED, Status.RUNNING}


def test_error_messages_name_everything() -> None:
    assert str(UnknownSlugs(["a"])).startswith("unknown workstream: a")
    assert "unknown workstreams: a, b" in str(UnknownSlugs(["a", "b"]))
    assert str(Busy(["x", "y"], action="remove")) == "cannot remove: already running: x, y"
