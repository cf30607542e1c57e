"""Random and malformed payloads for every aidp/* method, over one long-lived `aidp serve` process:
every request is answered (a result, or an error with an expected code) within a bound, and the
server stays alive and consistent. Hypothesis drives a synchronous test; the asyncio client lives
in an event loop the test runs between examples."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import WS_STATUS, RawClient, frame, server_command
from support import git

pytestmark = pytest.mark.timeout(170)

METHODS = [
    "aidp/wsRun",
    "aidp/wsRunAll",
    "aidp/wsList",
    "aidp/wsNew",
    "aidp/wsRemove",
    "aidp/wsPause",
    "aidp/wsResume",
    "aidp/wsCancel",
    "aidp/wsLog",
    "aidp/wsDiff",
    "aidp/wsConflicts",
    "aidp/wsLand",
    "aidp/wsSync",
]
FIELDS = [
    "slug",
    "slugs",
    "task",
    "command",
    "baseBranch",
    "maxConcurrent",
    "mode",
    "steps",
    "timeoutS",
    "deleteBranch",
    "force",
    "runId",
    "tailBytes",
    "base",
    "maxBytes",
    "strategy",
    "into",
    "rm",
]
# Request codes an answer may carry: bad params, busy, failed (a git error), cannot land. Never an
# internal error.
EXPECTED_CODES = {-32602, -32002, -32803, -32010}
SLUG_POOL = ["target", "fz-a", "fz-b", "0", "a" * 64]
ANSWER_TIMEOUT_S = 60.0

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
valid_slugs = (
    st.sampled_from(["target", "fz-a"])
    | st.sampled_from(SLUG_POOL)
    | st.from_regex(r"[a-z0-9]{1,6}(-[a-z0-9]{1,6}){0,2}", fullmatch=True)
)
slugs = valid_slugs | st.text(max_size=70)
refs = st.sampled_from(["main", "HEAD", "-x", "nope", "main~1", "aidp/fz-a"]) | st.text(min_size=1, max_size=12)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "slug": valid_slugs,
    "slugs": st.lists(valid_slugs, min_size=1, max_size=3),
    "task": st.text(min_size=1, max_size=40),
    "command": st.sampled_from([["true"], ["false"], ["sh", "-c", "echo hi; exit 3"]])
    | st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3),
    "baseBranch": refs,
    "maxConcurrent": st.integers(min_value=1, max_value=64),
    "mode": st.text(min_size=1, max_size=12),
    "steps": st.lists(st.text(min_size=1, max_size=8), max_size=3),
    "timeoutS": st.floats(min_value=0.5, max_value=30),
    "deleteBranch": st.booleans(),
    "force": st.booleans(),
    "runId": st.text(max_size=20),
    "tailBytes": st.integers(min_value=0, max_value=2**70),
    "base": refs,
    "maxBytes": st.integers(min_value=1, max_value=2**70),
    "strategy": st.sampled_from(["merge", "squash", "rebase"]),
    "into": refs,
    "rm": st.booleans(),
}
BAD: dict[str, st.SearchStrategy[Any]] = {
    "slug": st.text(max_size=70) | json_values,
    "slugs": st.lists(slugs, max_size=4) | json_values,
    "maxConcurrent": st.sampled_from([0, 65, -1, "3", True, 2.5, 2**70, None]) | json_values,
    "timeoutS": st.sampled_from([0, -1, "5", 1e308, float("nan"), float("inf"), True]) | json_values,
    "tailBytes": st.integers(max_value=-1) | json_values,
    "maxBytes": st.integers(max_value=0) | json_values,
    "strategy": st.text(max_size=12) | json_values,
}
# Per method: required fields, optional fields.
SHAPES: dict[str, tuple[list[str], list[str]]] = {
    "aidp/wsRun": (["slugs"], ["maxConcurrent", "mode", "steps", "timeoutS"]),
    "aidp/wsRunAll": ([], ["maxConcurrent", "mode", "steps", "timeoutS"]),
    "aidp/wsList": ([], []),
    "aidp/wsNew": (["slug", "task"], ["baseBranch", "command"]),
    "aidp/wsRemove": (["slug"], ["deleteBranch", "force"]),
    "aidp/wsPause": (["slug"], []),
    "aidp/wsResume": (["slug"], []),
    "aidp/wsCancel": ([], ["slugs", "runId"]),
    "aidp/wsLog": (["slug"], ["tailBytes"]),
    "aidp/wsDiff": (["slug"], ["base", "maxBytes"]),
    "aidp/wsConflicts": ([], ["slugs"]),
    "aidp/wsLand": (["slugs"], ["strategy", "into", "rm"]),
    "aidp/wsSync": (["slug"], ["strategy"]),
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """A method and its params: well formed, or well formed but for one mutation (a wrong-typed or
    out-of-range value, a missing or an unknown field), or any JSON value at all."""
    method = draw(st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "random"]))
    if kind == "random":
        return method, draw(json_values)
    required, optional = SHAPES[method]
    keys = required + draw(st.lists(st.sampled_from(optional), unique=True)) if optional else required
    params: dict[str, Any] = {key: draw(GOOD[key]) for key in keys}
    if kind == "mutated":
        how = draw(st.sampled_from(["wrong", "missing", "unknown"]))
        if how == "wrong" or (how == "missing" and not params):
            key = draw(st.sampled_from(FIELDS))
            params[key] = draw(BAD.get(key, json_values))
        elif how == "missing":
            del params[draw(st.sampled_from(sorted(params)))]
        else:
            params[draw(st.text(max_size=12).filter(lambda k: k not in FIELDS))] = draw(json_values)
    return method, params


@pytest.fixture
def fuzz_server(repo: Path, tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, RawClient]]:
    # Every run is quick whatever the payload: `true` as the harness, a timeout as a backstop.
    write_config(repo, f"[harness]\ncommand = {toml_list(['true'])}\ntimeout_s = 20\ngrace_s = 0.2\n")
    loop = asyncio.new_event_loop()
    raw = loop.run_until_complete(RawClient.start(server_command(repo), tmp_path))
    try:
        loop.run_until_complete(raw.initialize(progress=True))
        for slug in ("target", "fz-a"):
            ws = loop.run_until_complete(raw.result("aidp/wsNew", {"slug": slug, "task": "fuzz target"}))
        # Work to diff, land and sync: a commit on fz-a.
        Path(ws["path"], "fz-a.txt").write_text("fz-a\n")
        git(Path(ws["path"]), "add", "fz-a.txt")
        git(Path(ws["path"]), "commit", "-q", "-m", "fz-a: work")
        yield loop, raw
    finally:
        loop.run_until_complete(raw.close(timeout=60))
        loop.close()


def test_fuzz_every_method_answers_and_the_server_survives(
    fuzz_server: tuple[asyncio.AbstractEventLoop, RawClient],
) -> None:
    loop, raw = fuzz_server
    codes: dict[int, int] = {}
    results = 0

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests())
    def one(request: tuple[str, Any]) -> None:
        nonlocal results
        method, params = request
        response = loop.run_until_complete(raw.request(method, params, timeout=ANSWER_TIMEOUT_S))
        assert ("result" in response) != ("error" in response), response
        if "error" in response:
            code = response["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
            assert code in EXPECTED_CODES, (method, params, response["error"])
            assert isinstance(response["error"]["message"], str) and response["error"]["message"]
        else:
            results += 1
        assert raw.proc.returncode is None

    one()

    # Alive, consistent, nothing left in flight.
    listed = loop.run_until_complete(raw.result("aidp/wsList", {}))
    assert all(ws["status"] not in ("queued", "running") for ws in listed["workstreams"])
    for ws in listed["workstreams"]:
        assert Path(ws["path"]).is_dir(), ws
    # Every status notification the fuzz provoked is well formed.
    for note in raw.of(WS_STATUS):
        assert set(note) == {
            "runId",
            "slug",
            "status",
            "exitCode",
            "durationS",
            "error",
            "startedAt",
            "sandbox",
            "attempt",
            "maxAttempts",
            "waiting",
            "progress",
            "host",
            "elsewhere",
        }
    assert codes.get(-32602, 0) > 0 and results > 0, (codes, results)


def test_fuzz_raw_bodies_never_stop_the_server(fuzz_server: tuple[asyncio.AbstractEventLoop, RawClient]) -> None:
    """Not even JSON-RPC: arbitrary JSON values and bytes as whole message bodies."""
    loop, raw = fuzz_server

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
    def one(body: bytes) -> None:
        raw.send_raw(frame(body))
        response = loop.run_until_complete(raw.request("aidp/wsList", {}, timeout=ANSWER_TIMEOUT_S))
        assert "result" in response, response

    one()
    assert raw.proc.returncode is None
