"""Review and land (issue 9, sections 1 to 3) in real repositories, through the CLI and the engine:
the change summary, the diff, the conflict matrix, landing under each strategy, refusals that
change nothing, a target branch moved meanwhile, sync, and push to a local bare repository."""

from __future__ import annotations

import json
import os
import pty
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from support import PYTHON, child_env, cli, git, make_repo

from aidp.engine import Engine, Status
from aidp.engine import review as review_module
from aidp.engine.errors import Busy, CannotLand, Refused
from aidp.engine.events import StatusChanged


def commit_file(path: Path, name: str, text: str, message: str, *options: str) -> str:
    """Write `name` in the worktree `path` and commit it (with `git commit` `options`); returns the
    new head."""
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)
    git(path, "add", "--", name)
    git(path, "commit", "-q", "-m", message, *options)
    return head(path)


def head(path: Path, rev: str = "HEAD") -> str:
    return git(path, "rev-parse", rev).strip()


def parents(repo: Path, rev: str) -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


def new(repo: Path, slug: str, task: str = "do the thing") -> Path:
    result = cli(repo, "ws", "new", slug, task)
    assert result.returncode == 0, result.stderr
    return repo / ".worktrees" / slug


def snapshot(repo: Path) -> dict[str, str]:
    """Everything a refused land must leave alone: every ref, HEAD, and the index and status of
    the main worktree and of every workstream's worktree."""
    state = {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "HEAD": git(repo, "symbolic-ref", "HEAD") + head(repo),
    }
    for path in [repo, *sorted((repo / ".worktrees").iterdir())]:
        state[f"index {path.name}"] = git(path, "ls-files", "-s")
        state[f"status {path.name}"] = git(path, "status", "--porcelain", "--untracked-files=all")
        state[f"HEAD {path.name}"] = head(path)
    return state


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    """a and b change the same line of README.md; c adds its own file; d commits its own file
    and leaves an uncommitted change to README.md; e changes shared.txt, which main changes too
    after they were created."""
    repo = make_repo(tmp_path)
    commit_file(repo, "shared.txt", "shared\n", "add shared.txt")
    trees = {slug: new(repo, slug, f"task {slug}") for slug in "abcde"}
    commit_file(trees["a"], "README.md", "from a\n", "a edits README")
    commit_file(trees["b"], "README.md", "from b\n", "b edits README")
    commit_file(trees["c"], "c.txt", "c\n", "c adds c.txt")
    commit_file(trees["d"], "d.txt", "d\n", "d adds d.txt")
    (trees["d"] / "README.md").write_text("uncommitted by d\n")
    commit_file(trees["e"], "shared.txt", "from e\n", "e edits shared")
    commit_file(repo, "shared.txt", "from main\n", "main edits shared")
    return repo


# -- what a workstream changed --------------------------------------------------------------------


def test_the_change_summary_is_on_every_workstream(matrix: Path) -> None:
    listed = json.loads(cli(matrix, "ws", "list", "--json").stdout)
    changes = {ws["slug"]: ws["changes"] for ws in listed}
    assert changes["a"] == {
        "baseBranch": "main",
        "mergeBase": head(matrix, "main~1"),
        "ahead": 1,
        "behind": 1,
        "files": 1,
        "added": 1,
        "removed": 1,
        "dirty": False,
        "conflicts": False,
    }
    assert changes["d"]["dirty"] is True and changes["d"]["files"] == 1
    assert changes["e"]["conflicts"] is True


def test_a_list_asks_git_about_each_pair_of_commits_once(tmp_path: Path) -> None:
    """Workstreams whose branches are at the same commit share the git work of their change
    summaries: a fresh `aidp ws list` compares each pair of commits once, however many workstreams
    are at it (thousands on a few commits, in a repository aidp made them in), and every one still
    shows its summary. The git it runs is a wrapper on PATH that logs each command."""
    repo = make_repo(tmp_path)
    trees = {slug: new(repo, slug, f"task {slug}") for slug in "abc"}
    shared = commit_file(trees["a"], "a.txt", "a\n", "a adds a.txt")
    for slug in "bc":
        git(trees[slug], "reset", "-q", "--hard", shared)
    log, wrapper = tmp_path / "git.log", tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{shutil.which("git")}" "$@"\n')
    wrapper.chmod(0o755)
    listed = cli(repo, "ws", "list", "--json", env={"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"})
    assert listed.returncode == 0, listed.stderr
    summaries = {ws["slug"]: (ws["changes"]["ahead"], ws["changes"]["files"]) for ws in json.loads(listed.stdout)}
    assert summaries == {"a": (1, 1), "b": (1, 1), "c": (1, 1)}
    asked = log.read_text().splitlines()
    assert sum(line.startswith("rev-list --left-right") for line in asked) == 1, asked
    assert sum(line.startswith("diff ") for line in asked) == 1, asked


def test_diff_shows_committed_work_and_uncommitted_work_apart_without_touching_the_index(matrix: Path) -> None:
    tree = matrix / ".worktrees" / "d"
    (tree / "new.txt").write_text("untracked\n")
    index_before = git(tree, "ls-files", "-s")
    result = cli(matrix, "ws", "diff", "d")
    assert result.returncode == 0, result.stderr
    committed, _, uncommitted = result.stdout.partition("# uncommitted changes in the worktree of d")
    assert "+++ b/d.txt" in committed and "README.md" not in committed
    assert "+uncommitted by d" in uncommitted and "+++ b/new.txt" in uncommitted
    assert git(tree, "ls-files", "-s") == index_before
    assert "?? new.txt" in git(tree, "status", "--porcelain")
    stat = cli(matrix, "ws", "diff", "d", "--stat").stdout.splitlines()
    assert stat[0].split() == ["d.txt", "|", "+1", "-0"] and stat[2] == "# uncommitted:"
    names = cli(matrix, "ws", "diff", "d", "--name-only").stdout.splitlines()
    assert names == ["d.txt", "# uncommitted:", "README.md", "new.txt"]
    against = cli(matrix, "ws", "diff", "a", "--name-only", "--base", "aidp/b")
    assert against.stdout.splitlines() == ["README.md"]


def test_diff_refuses_a_bad_base(matrix: Path) -> None:
    bad = cli(matrix, "ws", "diff", "a", "--base=--output=/tmp/x")
    assert bad.returncode == 2 and "invalid base branch" in bad.stderr
    missing = cli(matrix, "ws", "diff", "a", "--base", "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


async def test_diff_patch_is_cut_at_max_bytes(matrix: Path) -> None:
    commit_file(matrix / ".worktrees" / "c", "big.txt", "x" * 100 + "\n" * 5000, "big")
    engine = await Engine.open(matrix)
    try:
        whole = await engine.diff("c")
        cut = await engine.diff("c", max_bytes=1000)
    finally:
        await engine.close()
    assert not whole.truncated and len(whole.patch.encode()) > 1000
    assert cut.truncated and cut.patch == whole.patch.encode()[:1000].decode(errors="replace")
    assert [f.path for f in cut.files] == ["big.txt", "c.txt"]


def diff_on_a_terminal(repo: Path, pager: str) -> str:
    """`aidp ws diff c` with its stdout on a pseudo-terminal and `$PAGER` set; returns what it wrote
    on the terminal itself."""
    main, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [PYTHON, "-m", "aidp", "ws", "diff", "c"],
            cwd=repo,
            env={**child_env(), "PAGER": pager},
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        os.set_blocking(main, False)
        written = b""
        while True:
            try:
                written += os.read(main, 65536)
            except BlockingIOError:
                return written.decode()
    finally:
        os.close(terminal)
        os.close(main)


def test_diff_on_a_terminal_is_paged_with_the_pagers_own_arguments_never_a_shell(matrix: Path, tmp_path: Path) -> None:
    paged = tmp_path / "paged.txt"
    pager = tmp_path / "pager.py"
    pager.write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text(sys.stdin.read())\n")
    assert diff_on_a_terminal(matrix, shlex.join([PYTHON, str(pager), str(paged)])) == ""
    assert "+++ b/c.txt" in paged.read_text()
    marker = tmp_path / "shell-ran"
    printed = diff_on_a_terminal(matrix, f"cat; touch {marker}")  # no program "cat;": printed as it is
    assert "+++ b/c.txt" in printed and not marker.exists()


# -- conflicts ----------------------------------------------------------------------------------------


def test_the_conflict_matrix(matrix: Path) -> None:
    result = cli(matrix, "ws", "conflicts", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert {c["slug"]: (c["clean"], c["files"]) for c in report["withBase"]} == {
        "a": (True, []),
        "b": (True, []),
        "c": (True, []),
        "d": (True, []),  # its uncommitted README.md change is not part of it (changes.dirty says so)
        "e": (False, ["shared.txt"]),
    }
    assert report["pairs"] == [{"a": "a", "b": "b", "files": ["README.md"]}]
    text = cli(matrix, "ws", "conflicts")
    assert "e  CONFLICTS with main: shared.txt" in text.stdout
    assert "  a <-> b: README.md" in text.stdout
    clean = cli(matrix, "ws", "conflicts", "a", "c", "d")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no two of them conflict with each other" in clean.stdout


def test_conflicts_of_an_unknown_workstream_is_an_input_error(matrix: Path) -> None:
    result = cli(matrix, "ws", "conflicts", "a", "zz")
    assert result.returncode == 2 and "unknown workstream: zz" in result.stderr


# -- landing ------------------------------------------------------------------------------------------


def test_land_merge_makes_a_two_parent_commit_and_updates_the_checked_out_main(matrix: Path) -> None:
    old, ws_head = head(matrix, "main"), head(matrix, "aidp/c")
    result = cli(matrix, "ws", "land", "c")
    assert result.returncode == 0, result.stderr
    new = head(matrix, "main")
    assert f"landed c into main (merge): main is now {new[:12]}" in result.stdout
    assert parents(matrix, new) == [old, ws_head]
    message = git(matrix, "log", "-1", "--format=%B", new)
    assert "Merge workstream c (aidp/c) into main" in message and "task c" in message
    assert (matrix / "c.txt").read_text() == "c\n"  # the main worktree followed
    assert git(matrix, "status", "--porcelain") == ""
    listed = {ws["slug"]: ws for ws in json.loads(cli(matrix, "ws", "list", "--json").stdout)}
    assert listed["c"]["status"] == "landed"
    again = cli(matrix, "ws", "land", "c")
    assert again.returncode == 1 and "nothing to land" in again.stderr


def test_land_squash_makes_one_commit_with_the_workstreams_tree(matrix: Path) -> None:
    tree = matrix / ".worktrees" / "c"
    commit_file(tree, "c2.txt", "c2\n", "c adds c2.txt")
    old = head(matrix, "main")
    result = cli(matrix, "ws", "land", "c", "--strategy", "squash")
    assert result.returncode == 0, result.stderr
    new = head(matrix, "main")
    assert parents(matrix, new) == [old]
    assert git(matrix, "diff", "--name-only", old, new).split() == ["c.txt", "c2.txt"]
    assert "c adds c2.txt" in git(matrix, "log", "-1", "--format=%B", new)


def test_land_rebase_replays_each_commit_keeping_authors_and_messages(matrix: Path) -> None:
    tree = matrix / ".worktrees" / "c"
    commit_file(
        tree,
        "c2.txt",
        "c2\n",
        "second of c\n\nwith a body",
        "--author=Ada <ada@example.org>",
        "--date=2001-02-03T04:05:06+0100",
    )
    old = head(matrix, "main")
    result = cli(matrix, "ws", "land", "c", "--strategy", "rebase")
    assert result.returncode == 0, result.stderr
    new = head(matrix, "main")
    replayed = git(matrix, "rev-list", "--reverse", f"{old}..{new}").split()
    assert len(replayed) == 2
    assert parents(matrix, replayed[0]) == [old] and parents(matrix, replayed[1]) == [replayed[0]]
    fmt = "--format=%an <%ae> %ad|%B"
    original = git(matrix, "log", fmt, "main~1..aidp/c", "--reverse").strip()
    assert git(matrix, "log", fmt, f"{old}..{new}", "--reverse").strip() == original
    assert "Ada <ada@example.org> Sat Feb 3 04:05:06 2001 +0100|second of c\n\nwith a body" in original
    assert git(matrix, "diff", "--name-only", old, new).split() == ["c.txt", "c2.txt"]
    assert (matrix / "c2.txt").read_text() == "c2\n" and git(matrix, "status", "--porcelain") == ""


def test_land_rebase_refuses_a_commit_that_conflicts_when_replayed(matrix: Path) -> None:
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "e", "--strategy", "rebase")
    assert result.returncode == 1
    assert "conflicts with main when replayed" in result.stderr and "shared.txt" in result.stderr
    assert snapshot(matrix) == before


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
def test_a_conflicting_land_changes_nothing(matrix: Path, strategy: str) -> None:
    assert cli(matrix, "ws", "land", "a").returncode == 0
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "b", "--strategy", strategy)
    assert result.returncode == 1
    assert "cannot land b: " in result.stderr and "  README.md" in result.stderr
    assert snapshot(matrix) == before


def test_a_dirty_workstream_is_refused_and_nothing_changes(matrix: Path) -> None:
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "d")
    assert result.returncode == 1
    assert "cannot land d: its worktree has uncommitted changes" in result.stderr and "README.md" in result.stderr
    assert snapshot(matrix) == before


def test_a_dirty_main_worktree_is_refused_before_anything_changes(matrix: Path) -> None:
    (matrix / "README.md").write_text("edited in main, not committed\n")
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "c")
    assert result.returncode == 1
    assert f"main is checked out in {matrix}, which has uncommitted changes" in result.stderr
    assert snapshot(matrix) == before
    assert (matrix / "README.md").read_text() == "edited in main, not committed\n"


def test_an_untracked_file_in_the_way_is_refused_before_anything_changes(matrix: Path) -> None:
    (matrix / "c.txt").write_text("mine\n")
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "c")
    assert result.returncode == 1 and "untracked files are in the way" in result.stderr and "c.txt" in result.stderr
    assert snapshot(matrix) == before


def test_land_stops_at_the_first_that_cannot_and_names_those_landed_before(matrix: Path) -> None:
    result = cli(matrix, "ws", "land", "c", "e", "a")
    assert result.returncode == 1
    assert "cannot land e: it conflicts with main:\n  shared.txt" in result.stderr
    assert "landed before it: c into main" in result.stderr
    statuses = {ws["slug"]: ws["status"] for ws in json.loads(cli(matrix, "ws", "list", "--json").stdout)}
    assert (statuses["c"], statuses["e"], statuses["a"]) == ("landed", "active", "active")


def test_land_into_a_branch_not_checked_out_and_then_rm(matrix: Path) -> None:
    git(matrix, "branch", "release", "main~1")
    before_main = head(matrix, "main")
    result = cli(matrix, "ws", "land", "a", "--into", "release", "--strategy", "squash", "--rm")
    assert result.returncode == 0, result.stderr
    assert "removed its worktree and branch" in result.stdout
    assert head(matrix, "main") == before_main
    assert git(matrix, "show", "release:README.md") == "from a\n"
    assert not (matrix / ".worktrees" / "a").exists()
    assert git(matrix, "branch", "--list", "aidp/a") == ""
    assert "a" not in {ws["slug"] for ws in json.loads(cli(matrix, "ws", "list", "--json").stdout)}


def test_land_refuses_a_target_that_is_no_local_branch(matrix: Path) -> None:
    git(matrix, "tag", "v1.0", "main")
    before = snapshot(matrix)
    result = cli(matrix, "ws", "land", "c", "--into", "v1.0")
    assert result.returncode == 1 and "the target 'v1.0' is not a local branch (name one with --into)" in result.stderr
    assert snapshot(matrix) == before


async def test_a_target_moved_meanwhile_is_detected_and_nothing_is_overwritten(
    matrix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone commits on main between the build of the merge and the update of the ref: the
    compare-and-swap fails, their commit stays, and the workstream is not marked landed."""
    build = review_module.build
    theirs: list[str] = []

    async def build_then_someone_commits(*args: object, **kwargs: object) -> str:
        new = await build(*args, **kwargs)  # type: ignore[arg-type]
        theirs.append(commit_file(matrix, "theirs.txt", "theirs\n", "someone else's commit"))
        return new

    monkeypatch.setattr(review_module, "build", build_then_someone_commits)
    engine = await Engine.open(matrix)
    try:
        with pytest.raises(CannotLand) as refused:
            await engine.land(["c"])
        assert refused.value.slug == "c" and "main moved meanwhile" in refused.value.reason
        assert head(matrix, "main") == theirs[0]
        assert (await engine.get("c")).status == Status.ACTIVE
    finally:
        await engine.close()
    assert git(matrix, "status", "--porcelain") == ""


async def test_move_branch_with_a_stale_old_value_changes_nothing(matrix: Path) -> None:
    stale, now = head(matrix, "main~1"), head(matrix, "main")
    why = await review_module.move_branch(matrix, "main", stale, head(matrix, "aidp/c"), "test", [matrix])
    assert why == "main moved meanwhile (someone else updated it); try again"
    assert head(matrix, "main") == now and git(matrix, "status", "--porcelain") == ""


# -- sync -------------------------------------------------------------------------------------------


def test_sync_rebase_replays_the_workstream_on_its_base_inside_its_worktree(matrix: Path) -> None:
    tree = matrix / ".worktrees" / "c"
    result = cli(matrix, "ws", "sync", "c")
    assert result.returncode == 0, result.stderr
    assert parents(matrix, "aidp/c") == [head(matrix, "main")]
    assert (tree / "shared.txt").read_text() == "from main\n" and (tree / "c.txt").exists()
    assert git(tree, "status", "--porcelain") == "" and head(tree) == head(matrix, "aidp/c")
    changes = {ws["slug"]: ws["changes"] for ws in json.loads(cli(matrix, "ws", "list", "--json").stdout)}
    assert (changes["c"]["ahead"], changes["c"]["behind"]) == (1, 0)


def test_sync_merge_makes_a_merge_commit_on_the_workstream(matrix: Path) -> None:
    old = head(matrix, "aidp/c")
    result = cli(matrix, "ws", "sync", "c", "--strategy", "merge")
    assert result.returncode == 0, result.stderr
    assert parents(matrix, "aidp/c") == [old, head(matrix, "main")]
    assert (matrix / ".worktrees" / "c" / "shared.txt").read_text() == "from main\n"


def test_sync_refuses_a_conflict_and_a_dirty_worktree_changing_nothing(matrix: Path) -> None:
    before = snapshot(matrix)
    conflict = cli(matrix, "ws", "sync", "e")
    assert conflict.returncode == 1 and "cannot sync e" in conflict.stderr and "shared.txt" in conflict.stderr
    dirty = cli(matrix, "ws", "sync", "d", "--strategy", "merge")
    assert dirty.returncode == 1 and "uncommitted changes" in dirty.stderr
    assert snapshot(matrix) == before


async def test_land_and_sync_refuse_a_running_workstream(matrix: Path) -> None:
    engine = await Engine.open(matrix)
    try:
        await engine.db.call(engine.db.store.claim, ["c"], "run-x", engine._owner, {"c": None})
        before = snapshot(matrix)
        with pytest.raises(CannotLand, match="it is queued"):
            await engine.land(["c"])
        with pytest.raises(Refused, match="cannot sync c: it is queued"):
            await engine.sync("c")
        assert snapshot(matrix) == before
    finally:
        await engine.close()


# -- push -------------------------------------------------------------------------------------------


def test_push_to_a_local_bare_repository(matrix: Path, tmp_path: Path) -> None:
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(matrix, "remote", "add", "origin", str(bare))
    result = cli(matrix, "ws", "push", "c")
    assert result.returncode == 0, result.stderr
    assert "pushed aidp/c to origin" in result.stdout
    assert head(bare, "refs/heads/aidp/c") == head(matrix, "aidp/c")
    option = cli(matrix, "ws", "push", "c", "--remote", "--upload-pack=touch x")
    assert option.returncode == 2 and "invalid remote" in option.stderr


def test_push_pr_without_gh_is_a_clear_error_and_pushes_nothing(matrix: Path, tmp_path: Path) -> None:
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(matrix, "remote", "add", "origin", str(bare))
    bin_dir = tmp_path / "bin"  # git, and no gh
    bin_dir.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    os.symlink(git_path, bin_dir / "git")
    result = cli(matrix, "ws", "push", "c", "--pr", env={"PATH": str(bin_dir)})
    assert result.returncode == 1
    assert "--pr needs the GitHub CLI 'gh', which is not installed" in result.stderr
    assert git(bare, "for-each-ref") == ""


def test_pairs_that_forked_elsewhere_or_collide_on_a_folder_are_found(matrix: Path) -> None:
    """The pair filter never hides a conflict: a file against a folder of the same name, and a
    workstream forked from a later commit of main (another merge-base) against one forked earlier."""
    commit_file(new(matrix, "f"), "thing", "a file\n", "f adds the file thing")
    commit_file(new(matrix, "g"), "thing/inner.txt", "in a folder\n", "g adds the folder thing")
    commit_file(new(matrix, "h"), "README.md", "from h\n", "h, forked later, edits README")
    result = cli(matrix, "ws", "conflicts", "--json", "a", "f", "g", "h")
    pairs = {(p["a"], p["b"]): p["files"] for p in json.loads(result.stdout)["pairs"]}
    assert set(pairs) == {("a", "h"), ("f", "g")}
    assert pairs[("a", "h")] == ["README.md"] and pairs[("f", "g")][0].startswith("thing")


async def test_renames_and_binary_files_in_the_diff_and_the_summary(matrix: Path) -> None:
    tree = matrix / ".worktrees" / "c"
    git(tree, "mv", "shared.txt", "moved.txt")
    (tree / "blob.bin").write_bytes(b"\0\1\2binary")
    git(tree, "add", "blob.bin")
    git(tree, "commit", "-q", "-m", "c moves shared.txt and adds a binary file")
    engine = await Engine.open(matrix)
    try:
        diff = await engine.diff("c")
        changes = (await engine.get("c")).changes
    finally:
        await engine.close()
    by_path = {f.path: f for f in diff.files}
    assert set(by_path) == {"blob.bin", "c.txt", "moved.txt"}
    assert (by_path["moved.txt"].status, by_path["moved.txt"].old_path) == ("R", "shared.txt")
    assert (by_path["blob.bin"].added, by_path["blob.bin"].removed) == (None, None)
    assert changes is not None and (changes.files, changes.added, changes.removed) == (3, 1, 0)


async def test_a_workstream_being_landed_cannot_start_a_run(matrix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Land holds the workstream as `ws rm` does: a run asked for meanwhile is refused, so nothing
    commits on the branch while it lands and it never rests `landed` while running."""
    build = review_module.build
    refusals: list[str] = []
    engine = await Engine.open(matrix)

    async def build_while_someone_runs_it(*args: object, **kwargs: object) -> str:
        with pytest.raises(Busy) as busy:
            await engine.start(["c"])
        refusals.append(str(busy.value))
        return await build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(review_module, "build", build_while_someone_runs_it)
    events: list[object] = []
    engine.events.subscribe(events.append)
    try:
        [landed] = await engine.land(["c"])
        assert refusals == ["cannot run: being landed: c"]
        assert StatusChanged(run_id=None, slug="c", status=Status.LANDED) in events
        assert landed.commit == head(matrix, "main")
        assert (await engine.get("c")).status == Status.LANDED
    finally:
        await engine.close()


async def test_land_refuses_a_workstream_another_process_holds(matrix: Path) -> None:
    engine = await Engine.open(matrix)
    try:
        await engine.db.call(engine.db.store.hold, "c", "remove", "remove-elsewhere", engine._owner)
        before = snapshot(matrix)
        with pytest.raises(CannotLand, match="being removed: c"):
            await engine.land(["c"])
        assert snapshot(matrix) == before
    finally:
        await engine.close()
