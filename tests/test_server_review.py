"""Review and land over JSON-RPC: `aidp/wsDiff`, `aidp/wsConflicts`, `aidp/wsLand`, `aidp/wsSync`
and the change summary on `aidp/wsList`, end to end. The server is a real subprocess on real
stdio (pytest-lsp), the workstreams are real worktrees of a real repository with real commits.
Facts only: refs, parents, trees, files, error codes and their data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from server_helpers import WS_LIST_CHANGED, WS_STATUS, AidpClient, initialize_params, lsp_session, server_command
from support import git, wait_until

from aidp.server.coalesce import Coalesced

pytestmark = pytest.mark.timeout(150)

CANNOT_LAND = -32010
INVALID_PARAMS = -32602


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    write_config(repo, f"[harness]\ncommand = {toml_list(['true'])}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        yield session


def head(cwd: Path, rev: str = "HEAD") -> str:
    return git(cwd, "rev-parse", rev).strip()


def commit(cwd: Path, files: dict[str, str], message: str) -> str:
    """Write `files` in the checkout `cwd` and commit them; the new commit."""
    for name, text in files.items():
        (cwd / name).write_text(text)
    git(cwd, "add", *files)
    git(cwd, "commit", "-q", "-m", message)
    return head(cwd)


async def workstream(client: AidpClient, slug: str, files: dict[str, str] | None = None) -> Path:
    """A new workstream (on `main`), with one commit of `files` on its branch when given; its worktree."""
    ws = await client.call("aidp/wsNew", {"slug": slug, "task": f"task of {slug}"})
    path = Path(ws["path"])
    if files:
        commit(path, files, f"{slug}: work")
    return path


def snapshot(repo: Path, *worktrees: Path) -> dict[str, str]:
    """Everything a refused request must leave as it was: every ref, and each checkout's HEAD,
    index and status."""
    state = {"refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)")}
    for cwd in (repo, *worktrees):
        state[f"{cwd}:HEAD"] = git(cwd, "rev-parse", "--symbolic-full-name", "HEAD") + head(cwd)
        state[f"{cwd}:index"] = git(cwd, "ls-files", "-s")
        state[f"{cwd}:status"] = git(cwd, "status", "--porcelain", "--untracked-files=all")
    return state


def parents(repo: Path, rev: str) -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


async def refused_land(client: AidpClient, slugs: list[str], **params: Any) -> dict[str, Any]:
    """`aidp/wsLand` must answer -32010: its data."""
    err = await client.fails("aidp/wsLand", {"slugs": slugs, **params})
    assert err.code == CANNOT_LAND, err
    assert isinstance(err.data, dict) and err.message.startswith(f"cannot land {err.data['slug']}")
    return err.data


async def changes(client: AidpClient, slug: str) -> dict[str, Any]:
    summary = (await client.workstreams())[slug]["changes"]
    assert summary is not None
    return dict(summary)


# -- what a workstream changed ------------------------------------------------------------------------


async def test_wslist_carries_base_commit_and_change_summary(client: AidpClient, repo: Path) -> None:
    start = head(repo)
    path = await workstream(client, "feat", {"notes.txt": "1\n2\n3\n"})
    commit(path, {"README.md": "hi\n"}, "feat: greet")
    (path / "notes.txt").write_text("1\n2\n3\n4\n")  # uncommitted

    listed = (await client.workstreams())["feat"]
    assert listed["baseCommit"] == start
    assert listed["changes"] == {
        "baseBranch": "main",
        "mergeBase": start,
        "ahead": 2,
        "behind": 0,
        "files": 2,
        "added": 4,
        "removed": 1,
        "dirty": True,
        "conflicts": False,
    }

    commit(repo, {"other.txt": "on main\n"}, "main moves on")
    moved = await changes(client, "feat")
    assert (moved["ahead"], moved["behind"], moved["mergeBase"], moved["conflicts"]) == (2, 1, start, False)


async def test_wsdiff_files_patch_uncommitted_and_bound(client: AidpClient, repo: Path) -> None:
    start = head(repo)
    path = await workstream(client, "feat", {"notes.txt": "one\ntwo\nthree\n", "README.md": "hi\n"})
    (path / "logo.bin").write_bytes(b"\x00\x01binary\x00")
    git(path, "add", "logo.bin")
    git(path, "commit", "-q", "-m", "feat: logo")
    (path / "notes.txt").write_text("one\ntwo\nthree\nfour\n")  # uncommitted

    diff = await client.call("aidp/wsDiff", {"slug": "feat"})
    assert (diff["slug"], diff["baseBranch"], diff["mergeBase"]) == ("feat", "main", start)
    assert diff["head"] == head(repo, "aidp/feat")
    files = {f["path"]: (f["status"], f["added"], f["removed"]) for f in diff["files"]}
    assert files == {"README.md": ("M", 1, 1), "notes.txt": ("A", 3, 0), "logo.bin": ("A", None, None)}
    assert "+three" in diff["patch"] and "-hello" in diff["patch"] and "+hi" in diff["patch"]
    assert "+four" not in diff["patch"]  # uncommitted work is apart
    assert [(f["path"], f["status"], f["added"], f["removed"]) for f in diff["uncommitted"]] == [
        ("notes.txt", "M", 1, 0)
    ]
    assert "+four" in diff["uncommittedPatch"]
    assert diff["truncated"] is False

    cut = await client.call("aidp/wsDiff", {"slug": "feat", "maxBytes": 40})
    assert cut["truncated"] is True
    assert 0 < len(cut["patch"].encode()) <= 40
    assert diff["patch"].startswith(cut["patch"])
    assert cut["files"] == diff["files"]  # the file list is never cut

    # Against another base: what the branch has that `side` (main plus the logo-less work) lacks.
    git(repo, "branch", "side", head(repo, "aidp/feat~1"))
    against = await client.call("aidp/wsDiff", {"slug": "feat", "base": "side"})
    assert [f["path"] for f in against["files"]] == ["logo.bin"]


# -- conflicts ----------------------------------------------------------------------------------------


async def three(client: AidpClient) -> dict[str, Path]:
    """`a` and `b` change the same line differently; `c` adds a file of its own."""
    return {
        "a": await workstream(client, "a", {"README.md": "hello from a\n"}),
        "b": await workstream(client, "b", {"README.md": "hello from b\n"}),
        "c": await workstream(client, "c", {"c.txt": "c\n"}),
    }


async def test_wsconflicts_pairs_and_base_touching_nothing(client: AidpClient, repo: Path) -> None:
    trees = await three(client)
    before = snapshot(repo, *trees.values())

    report = await client.call("aidp/wsConflicts", {})
    assert report["pairs"] == [{"a": "a", "b": "b", "files": ["README.md"]}]
    assert {r["slug"]: (r["clean"], r["files"]) for r in report["withBase"]} == {
        "a": (True, []),
        "b": (True, []),
        "c": (True, []),
    }
    assert (await client.call("aidp/wsConflicts", {"slugs": ["a", "c"]}))["pairs"] == []
    assert snapshot(repo, *trees.values()) == before

    commit(repo, {"README.md": "hello from main\n"}, "main edits the README")
    report = await client.call("aidp/wsConflicts", {"slugs": ["a", "b", "c"]})
    assert {r["slug"]: (r["clean"], r["files"]) for r in report["withBase"]} == {
        "a": (False, ["README.md"]),
        "b": (False, ["README.md"]),
        "c": (True, []),
    }
    listed = await client.workstreams()
    assert {slug: ws["changes"]["conflicts"] for slug, ws in listed.items()} == {"a": True, "b": True, "c": False}


# -- landing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
async def test_wsland_moves_the_ref_and_rests_landed(client: AidpClient, repo: Path, strategy: str) -> None:
    path = await workstream(client, "feat", {"feat.txt": "one\n"})
    tip = commit(path, {"feat.txt": "one\ntwo\n"}, "feat: second")
    old = head(repo, "main")
    changed = len(client.of(WS_LIST_CHANGED))

    result = await client.call("aidp/wsLand", {"slugs": ["feat"], "strategy": strategy})
    new = head(repo, "main")
    assert result == {
        "landed": [{"slug": "feat", "into": "main", "strategy": strategy, "commit": new, "removed": False}]
    }
    assert git(repo, "rev-parse", f"{new}^{{tree}}") == git(repo, "rev-parse", f"{tip}^{{tree}}")
    if strategy == "merge":
        assert parents(repo, new) == [old, tip]
    elif strategy == "squash":
        assert parents(repo, new) == [old]
    else:  # each commit replayed, with its message
        assert git(repo, "log", "--format=%s", f"{old}..{new}").splitlines() == ["feat: second", "feat: work"]
    assert head(repo, "aidp/feat") == tip  # the branch keeps its commits
    # The main worktree had `main` checked out, clean: it follows the ref.
    assert (repo / "feat.txt").read_text() == "one\ntwo\n"
    assert git(repo, "status", "--porcelain") == ""

    assert (await client.workstreams())["feat"]["status"] == "landed"
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) > changed, what="wsListChanged after land")
    assert [(n["runId"], n["status"]) for n in client.statuses("feat")] == [(None, "landed")]
    report = await client.call("aidp/wsConflicts", {})
    assert [r["slug"] for r in report["withBase"]] == []  # landed ones are left out


async def test_wsland_refusal_is_32010_with_its_data_and_changes_nothing(client: AidpClient, repo: Path) -> None:
    trees = await three(client)
    await client.call("aidp/wsLand", {"slugs": ["a"]})
    before = snapshot(repo, *trees.values())

    data = await refused_land(client, ["b"])
    assert (data["slug"], data["files"], data["landed"]) == ("b", ["README.md"], [])
    assert "conflicts" in data["reason"]
    assert snapshot(repo, *trees.values()) == before
    assert (await client.workstreams())["b"]["status"] != "landed"

    # Stops at the first that cannot land; those before it landed, and the error says so.
    data = await refused_land(client, ["c", "b"])
    assert data["slug"] == "b"
    assert data["landed"] == [
        {"slug": "c", "into": "main", "strategy": "merge", "commit": head(repo, "main"), "removed": False}
    ]
    statuses = {slug: ws["status"] for slug, ws in (await client.workstreams()).items()}
    assert statuses["c"] == "landed" and statuses["b"] != "landed"


async def test_wsland_refuses_uncommitted_work_naming_the_files(client: AidpClient, repo: Path) -> None:
    path = await workstream(client, "wip", {"wip.txt": "done\n"})
    (path / "wip.txt").write_text("done\nnot yet\n")
    before = snapshot(repo, path)

    data = await refused_land(client, ["wip"])
    assert (data["slug"], data["files"], data["landed"]) == ("wip", ["wip.txt"], [])
    assert "uncommitted" in data["reason"]
    assert snapshot(repo, path) == before

    # The target branch checked out in a worktree with uncommitted changes: refused, untouched.
    (path / "wip.txt").write_text("done\n")
    (repo / "README.md").write_text("edited by hand\n")
    before = snapshot(repo, path)
    data = await refused_land(client, ["wip"])
    assert (data["slug"], data["files"]) == ("wip", ["README.md"])
    assert "checked out" in data["reason"] and "uncommitted" in data["reason"]
    assert snapshot(repo, path) == before
    assert (repo / "README.md").read_text() == "edited by hand\n"


async def test_wsland_refuses_a_running_workstream(client: AidpClient, repo: Path, markers: Path) -> None:
    gate = markers / "gate"
    waits = ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.05; done']
    ws = await client.call("aidp/wsNew", {"slug": "busy", "task": "wait", "command": waits})
    commit(Path(ws["path"]), {"busy.txt": "x\n"}, "busy: work")
    run = client.start_call("aidp/wsRun", {"slugs": ["busy"]})
    await wait_until(lambda: "running" in [n["status"] for n in client.statuses("busy")], what="busy running")
    before = snapshot(repo)
    data = await refused_land(client, ["busy"])
    assert data["slug"] == "busy" and "running" in data["reason"]
    assert snapshot(repo) == before
    gate.touch()
    assert (await run)["completed"] == 1


async def test_racing_lands_queue_and_none_is_lost(client: AidpClient, repo: Path) -> None:
    """Lands sent at once to one server, all for `main`: they go one at a time, so none refuses
    another for moving the branch or for the main worktree caught mid-update. `p` twice: the
    second has nothing left to land."""
    tips = {slug: head(await workstream(client, slug, {f"{slug}.txt": f"{slug}\n"})) for slug in ("p", "q", "r")}
    calls = [client.start_call("aidp/wsLand", {"slugs": [slug]}) for slug in ("p", "q", "r", "p")]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    refused = [a for a in answers if isinstance(a, JsonRpcException)]
    assert len(refused) == 1 and refused[0].code == CANNOT_LAND, answers
    data = refused[0].data
    assert isinstance(data, dict) and data["slug"] == "p" and "nothing to land" in data["reason"]
    landed = [a["landed"][0] for a in answers if isinstance(a, dict)]
    assert sorted(r["slug"] for r in landed) == ["p", "q", "r"]
    for result in landed:  # every commit is on main
        git(repo, "merge-base", "--is-ancestor", result["commit"], "main")
        git(repo, "merge-base", "--is-ancestor", tips[result["slug"]], "main")
        assert (repo / f"{result['slug']}.txt").read_text() == f"{result['slug']}\n"
    assert git(repo, "status", "--porcelain") == "" and head(repo) == head(repo, "main")
    assert {ws["status"] for ws in (await client.workstreams()).values()} == {"landed"}


async def test_a_land_cancelled_midway_completes_and_answers_its_result(
    client: AidpClient, repo: Path, markers: Path
) -> None:
    """`$/cancelRequest` while `main` is being moved (a reference-transaction hook holds git
    there): the land completes, its worktree follows and it is recorded, rather than leaving
    `main` moved under a stale checkout."""
    await workstream(client, "feat", {"feat.txt": "x\n"})
    reached, gate = markers / "reached", markers / "gate"
    hook = repo / ".git" / "hooks" / "reference-transaction"
    hook.write_text(
        f'#!/bin/sh\n[ "$1" = committed ] || exit 0\ngrep -q " refs/heads/main$" || exit 0\n'
        f': > "{reached}"\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\n'
    )
    hook.chmod(0o755)
    land = client.start_call("aidp/wsLand", {"slugs": ["feat"]}, msg_id="the-land")
    await wait_until(reached.exists, what="the land moving main")
    client.protocol.notify("$/cancelRequest", lsp.CancelParams(id="the-land"))
    await client.workstreams()  # answered after the cancel was read
    gate.touch()

    result = await land
    assert result["landed"][0]["commit"] == head(repo, "main")
    assert git(repo, "status", "--porcelain") == "" and (repo / "feat.txt").read_text() == "x\n"
    assert (await client.workstreams())["feat"]["status"] == "landed"


async def test_wsland_into_another_branch_leaves_the_checked_out_one(client: AidpClient, repo: Path) -> None:
    await workstream(client, "feat", {"feat.txt": "x\n"})
    git(repo, "branch", "release")
    main = head(repo, "main")
    result = await client.call("aidp/wsLand", {"slugs": ["feat"], "into": "release", "strategy": "squash"})
    assert result["landed"][0]["into"] == "release" and result["landed"][0]["commit"] == head(repo, "release")
    assert parents(repo, "release") == [main]
    assert head(repo, "main") == main and not (repo / "feat.txt").exists()

    before = snapshot(repo)
    data = await refused_land(client, ["feat"], into="nope")
    assert data["slug"] == "feat" and "nope" in data["reason"]
    assert snapshot(repo) == before


async def test_wsland_rm_removes_worktree_and_branch(client: AidpClient, repo: Path) -> None:
    path = await workstream(client, "gone", {"gone.txt": "x\n"})
    result = await client.call("aidp/wsLand", {"slugs": ["gone"], "rm": True})
    assert result["landed"][0]["removed"] is True
    assert not path.exists()
    assert git(repo, "branch", "--list", "aidp/gone") == ""
    assert (repo / "gone.txt").read_text() == "x\n"
    assert "gone" not in await client.workstreams()


# -- sync ---------------------------------------------------------------------------------------------


async def test_wssync_brings_a_workstream_up_to_date_or_changes_nothing(client: AidpClient, repo: Path) -> None:
    trees = await three(client)
    await client.call("aidp/wsLand", {"slugs": ["a"]})
    assert (await changes(client, "c"))["behind"] == 2  # a's commit and the merge
    changed = len(client.of(WS_LIST_CHANGED))

    synced = await client.call("aidp/wsSync", {"slug": "c"})
    assert synced == {"slug": "c", "strategy": "rebase", "head": head(repo, "aidp/c")}
    assert parents(repo, "aidp/c") == [head(repo, "main")]  # replayed onto the base branch
    assert head(trees["c"]) == synced["head"]  # its worktree follows
    assert (trees["c"] / "README.md").read_text() == "hello from a\n"
    summary = await changes(client, "c")
    assert (summary["ahead"], summary["behind"]) == (1, 0)
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) > changed, what="wsListChanged after sync")

    before = snapshot(repo, *trees.values())
    err = await client.fails("aidp/wsSync", {"slug": "b", "strategy": "merge"})
    assert "README.md" in err.message
    assert snapshot(repo, *trees.values()) == before


# -- bad params ---------------------------------------------------------------------------------------


BAD_PARAMS: list[tuple[str, Any, str]] = [
    ("aidp/wsDiff", {}, "slug"),
    ("aidp/wsDiff", {"slug": "x", "maxBytes": 0}, "maxBytes"),
    ("aidp/wsDiff", {"slug": "x", "base": ""}, "base"),
    ("aidp/wsConflicts", {"slugs": ["Not A Slug"]}, "slugs"),
    ("aidp/wsLand", {"slugs": []}, "slugs"),
    ("aidp/wsLand", {"slugs": ["x"], "strategy": "octopus"}, "strategy"),
    ("aidp/wsLand", {"slugs": ["x"], "rm": "yes"}, "rm"),
    ("aidp/wsLand", {"slugs": ["x"], "force": True}, "force"),
    ("aidp/wsSync", {"slug": "x", "strategy": "squash"}, "strategy"),
    ("aidp/wsSync", [], "params"),
]


async def test_bad_params_are_32602_naming_the_field_and_unknown_slugs_with_data(
    client: AidpClient, repo: Path
) -> None:
    await workstream(client, "x")
    before = snapshot(repo)
    for method, params, field in BAD_PARAMS:
        err = await client.fails(method, params)
        assert (err.code, field in err.message) == (INVALID_PARAMS, True), (method, params, err.message)
    for method, params in [
        ("aidp/wsDiff", {"slug": "nope"}),
        ("aidp/wsConflicts", {"slugs": ["x", "nope"]}),
        ("aidp/wsLand", {"slugs": ["x", "nope"]}),
        ("aidp/wsSync", {"slug": "nope"}),
    ]:
        err = await client.fails(method, params)
        assert (err.code, err.data) == (INVALID_PARAMS, {"unknown": ["nope"]}), (method, params, err.message)
    assert snapshot(repo) == before
    assert (await client.workstreams())["x"]["status"] == "active"


# -- a run changes what a workstream changed --------------------------------------------------------


async def test_a_runs_end_announces_list_changed_and_wslist_shows_its_work(client: AidpClient, repo: Path) -> None:
    harness = toml_list(["sh", "-c", "echo work > out.txt"])
    write_config(repo, f'[harness]\ncommit = "on-success"\ncommand = {harness}\n')
    await workstream(client, "agent")
    assert (await changes(client, "agent"))["files"] == 0

    await client.call("aidp/wsRun", {"slugs": ["agent"]})
    final = next(i for i, (m, n) in enumerate(client.notes) if m == WS_STATUS and n["status"] == "completed")
    await wait_until(
        lambda: WS_LIST_CHANGED in [m for m, _ in client.notes[final + 1 :]], what="wsListChanged after the run"
    )
    summary = await changes(client, "agent")
    assert (summary["ahead"], summary["files"], summary["added"], summary["dirty"]) == (1, 1, 1, False)
    diff = await client.call("aidp/wsDiff", {"slug": "agent"})
    assert [f["path"] for f in diff["files"]] == ["out.txt"] and "+work" in diff["patch"]


# -- wsList, coalesced ------------------------------------------------------------------------------


async def test_pipelined_lists_share_computations_but_never_answer_older_than_asked(client: AidpClient) -> None:
    """Change summaries make a list cost git commands per workstream, so lists asked while one is
    computed share the next one. A list asked after a change was answered still shows it."""
    await workstream(client, "first", {"first.txt": "1\n"})
    burst = [client.start_call("aidp/wsList", {}) for _ in range(200)]
    created = client.start_call("aidp/wsNew", {"slug": "second", "task": "asked mid-burst"})
    await created
    after = await client.workstreams()
    assert sorted(after) == ["first", "second"] and after["first"]["changes"]["files"] == 1
    for answer in await asyncio.gather(*burst):
        assert {ws["slug"] for ws in answer["workstreams"]} <= {"first", "second"}


async def test_coalesced_answers_come_from_a_computation_started_after_the_call() -> None:
    coalesced: Coalesced[int] = Coalesced()
    state = {"version": 0}
    computed: list[int] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def compute() -> int:
        """The version it saw when it started."""
        seen = state["version"]
        computed.append(seen)
        entered.set()
        await release.wait()
        return seen

    first = asyncio.ensure_future(coalesced.get(compute))
    await entered.wait()
    state["version"] = 1  # changed while the first computation runs: later calls must see it
    later = [asyncio.ensure_future(coalesced.get(compute)) for _ in range(5)]
    release.set()
    assert await first == 0
    assert [await call for call in later] == [1] * 5
    assert computed == [0, 1]  # the five shared one computation
