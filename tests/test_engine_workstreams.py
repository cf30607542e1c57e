"""Workstreams on real git worktrees, and refusals that leave nothing half-done: bad and unknown
slugs, bad configuration, removal that would lose work."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import wait_file, write_config
from support import git

from aidp.engine import Engine, Status
from aidp.engine.errors import (
    AlreadyExists,
    Busy,
    ConfigError,
    GitError,
    InvalidInput,
    InvalidSlug,
    NotARepository,
    Refused,
    UnknownSlugs,
)

pytestmark = pytest.mark.timeout(60)

BAD_SLUGS = [
    "",
    "trailing-newline\n",
    "Upper",
    "with space",
    "-lead",
    "trail-",
    "double--dash",
    "../escape",
    "a/b",
    "x" * 65,
    "ünï",
    "a_b",
]


def branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/aidp/").split()


async def _nothing_ran(engine: Engine, repo: Path, slug: str) -> None:
    ws = await engine.get(slug)
    assert ws.status == Status.ACTIVE and ws.last_result is None
    assert await engine.log(slug) == (None, "")
    assert not (repo / ".aidp" / "logs" / slug).exists()
    assert [e.message for e in await engine.history(slug)] == ["created"]


async def test_create_makes_a_worktree_on_a_new_branch(engine: Engine, repo: Path) -> None:
    ws = await engine.create("feature-1", "do the thing")
    assert (ws.slug, ws.task, ws.status, ws.branch) == ("feature-1", "do the thing", Status.ACTIVE, "aidp/feature-1")
    assert Path(ws.path) == repo.resolve() / ".worktrees" / "feature-1"
    assert (Path(ws.path) / "README.md").read_text() == "hello\n"
    assert git(Path(ws.path), "rev-parse", "--abbrev-ref", "HEAD").strip() == "aidp/feature-1"
    assert git(repo, "rev-parse", "aidp/feature-1") == git(repo, "rev-parse", "main")
    assert [w.slug for w in await engine.workstreams()] == ["feature-1"]
    assert await engine.get("feature-1", changes=False) == ws
    with pytest.raises(AlreadyExists):
        await engine.create("feature-1", "again")


async def test_state_stays_out_of_git_status(engine: Engine, repo: Path) -> None:
    await engine.create("a", "t", command=["sh", "-c", "echo output; echo new > file.txt"])
    assert (await engine.run(["a"])).ok
    assert (repo / ".aidp" / "state.db").exists() and (repo / ".worktrees" / "a").is_dir()
    assert git(repo, "status", "--porcelain") == ""
    assert await engine.git_status("a") == "?? file.txt\n"
    # Opening again does not add the exclude lines twice.
    await (await Engine.open(repo)).close()
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.worktrees/") == 1 and exclude.count("/.aidp/") == 1


async def test_create_reuses_an_existing_branch(engine: Engine, repo: Path) -> None:
    git(repo, "branch", "aidp/reuse")
    scratch = repo.parent / "scratch"
    git(repo, "worktree", "add", "-q", str(scratch), "aidp/reuse")
    (scratch / "work.txt").write_text("earlier work\n")
    git(scratch, "add", "work.txt")
    git(scratch, "commit", "-q", "-m", "earlier work")
    git(repo, "worktree", "remove", str(scratch))
    tip = git(repo, "rev-parse", "aidp/reuse")

    ws = await engine.create("reuse", "continue")
    assert ws.branch == "aidp/reuse"
    assert (Path(ws.path) / "work.txt").read_text() == "earlier work\n"
    assert git(Path(ws.path), "rev-parse", "HEAD") == tip


async def test_create_from_a_base_branch(engine: Engine, repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "develop")
    (repo / "dev.txt").write_text("dev\n")
    git(repo, "add", "dev.txt")
    git(repo, "commit", "-q", "-m", "dev")
    git(repo, "checkout", "-q", "main")
    ws = await engine.create("on-dev", "t", base_branch="develop")
    assert (Path(ws.path) / "dev.txt").exists() and ws.base_branch == "develop"
    with pytest.raises(GitError, match="does not exist"):
        await engine.create("on-nothing", "t", base_branch="no-such-branch")
    with pytest.raises(GitError):
        await engine.create("dash", "t", base_branch="--orphan")
    assert {w.slug for w in await engine.workstreams()} == {"on-dev"}
    assert not (repo / ".worktrees" / "on-nothing").exists()
    assert branches(repo) == ["aidp/on-dev"]


@pytest.mark.parametrize("slug", BAD_SLUGS)
async def test_bad_slugs_are_refused_everywhere(engine: Engine, repo: Path, slug: str) -> None:
    await engine.create("good", "t", command=["true"])
    with pytest.raises(InvalidSlug):
        await engine.create(slug, "t")
    with pytest.raises(InvalidSlug):
        await engine.get(slug)
    with pytest.raises(InvalidSlug):
        await engine.start(["good", slug])
    with pytest.raises(InvalidSlug):
        await engine.cancel([slug])
    with pytest.raises(InvalidSlug):
        await engine.remove(slug)
    with pytest.raises(InvalidSlug):
        await engine.set_paused(slug, True)
    assert [w.slug for w in await engine.workstreams()] == ["good"]
    assert sorted(p.name for p in (repo / ".worktrees").iterdir()) == ["good"]
    assert branches(repo) == ["aidp/good"]
    await _nothing_ran(engine, repo, "good")


async def test_non_string_slug_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidSlug, match="must be a string"):
        await engine.get(cast(Any, 42))


async def test_unknown_slugs_are_all_named_and_nothing_runs(engine: Engine, repo: Path, tmp_path: Path) -> None:
    await engine.create("good", "t", command=["sh", "-c", f"touch {tmp_path}/ran"])
    with pytest.raises(UnknownSlugs) as info:
        await engine.start(["good", "nope-1", "good", "nope-2", "nope-1"])
    assert info.value.unknown == ["nope-1", "nope-2"]
    assert "nope-1" in str(info.value) and "nope-2" in str(info.value)
    with pytest.raises(UnknownSlugs):
        await engine.cancel(["good", "nope-3"])
    with pytest.raises(UnknownSlugs):
        await engine.get("nope-4")
    with pytest.raises(UnknownSlugs):
        await engine.history("nope-4")
    with pytest.raises(UnknownSlugs):
        await engine.log("nope-4")
    with pytest.raises(UnknownSlugs):
        await engine.remove("nope-4")
    with pytest.raises(UnknownSlugs):
        await engine.set_paused("nope-4", True)
    assert not (tmp_path / "ran").exists()
    await _nothing_ran(engine, repo, "good")
    assert (await engine.run(["good"])).ok  # and nothing was left claimed


async def test_bad_run_options_are_refused_before_anything_starts(engine: Engine, repo: Path) -> None:
    await engine.create("good", "t", command=["true"])
    bad: list[dict[str, Any]] = [
        {"max_concurrent": 0},
        {"max_concurrent": 65},
        {"max_concurrent": True},
        {"max_concurrent": "3"},
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"mode": ""},
        {"steps": ["a,b"]},
        {"steps": [""]},
    ]
    for options in bad:
        with pytest.raises(InvalidInput):
            await engine.start(["good"], **options)
    with pytest.raises(InvalidInput):
        await engine.start([])
    await _nothing_ran(engine, repo, "good")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[harness]\nmax_concurrent = 0\n", "max_concurrent"),
        ("[harness]\nmax_concurrent = 100\n", "max_concurrent"),
        ('[harness]\nmax_concurrent = "3"\n', "max_concurrent"),
        ("[harness]\ntimeout_s = -1\n", "timeout_s"),
        ("[harness]\ngrace_s = -1\n", "grace_s"),
        ("[harness]\ncommand = []\n", "command"),
        ('[harness]\ncommand = "claude -p"\n', "command"),
        ('[harness]\ncommand = ["ok", ""]\n', "command"),
        ("[harness]\nmax_concurent = 3\n", "max_concurent"),
        ("[harnes]\nmax_concurrent = 3\n", "harnes"),
        ('[harness]\nenv = { "A=B" = "x" }\n', "A=B"),
        ("[harness]\nenv = { A = 1 }\n", "env"),
        ("[harness\nmax_concurrent = 3\n", "not valid TOML"),
        ("max_concurrent = = 3\n", "not valid TOML"),
    ],
)
async def test_bad_config_is_a_config_error_naming_the_field(
    engine: Engine, repo: Path, tmp_path: Path, text: str, field: str
) -> None:
    await engine.create("good", "t", command=["sh", "-c", f"touch {tmp_path}/ran"])
    write_config(repo, text)
    with pytest.raises(ConfigError, match=r"config\.toml") as info:
        await engine.start(["good"])
    assert field in str(info.value)
    with pytest.raises(ConfigError):
        await engine.run_all()
    assert not (tmp_path / "ran").exists()
    await _nothing_ran(engine, repo, "good")
    # A bad config does not stop the engine opening (recovery falls back to defaults).
    await (await Engine.open(repo)).close()
    (repo / ".aidp" / "config.toml").unlink()
    assert (await engine.run(["good"])).ok


async def test_not_a_repository(tmp_path: Path) -> None:
    from aidp.engine.gitrepo import find_root

    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotARepository, match="git init"):
        find_root(plain)


async def test_find_root_from_inside_a_worktree(engine: Engine, repo: Path) -> None:
    from aidp.engine.gitrepo import find_root

    ws = await engine.create("inside", "t")
    sub = Path(ws.path) / "deep"
    sub.mkdir()
    assert find_root(sub) == repo.resolve()


async def test_empty_repository_refuses_create(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    engine = await Engine.open(empty)
    try:
        with pytest.raises(GitError, match="no commits"):
            await engine.create("first", "t")
        assert await engine.workstreams() == []
    finally:
        await engine.close()


async def test_invalid_task_and_command(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="task"):
        await engine.create("t1", "   ")
    with pytest.raises(InvalidInput, match="command"):
        await engine.create("t2", "t", command=[])
    with pytest.raises(InvalidInput, match="command"):
        await engine.create("t3", "t", command=["prog", ""])
    assert await engine.workstreams() == []


async def test_remove_clean_keeps_the_branch(engine: Engine, repo: Path) -> None:
    ws = await engine.create("clean", "t")
    notes = await engine.remove("clean")
    assert not Path(ws.path).exists()
    assert any("kept branch aidp/clean" in n for n in notes)
    assert branches(repo) == ["aidp/clean"]
    with pytest.raises(UnknownSlugs):
        await engine.get("clean")
    assert ws.path not in git(repo, "worktree", "list")
    # The slug (and its branch) can be used again.
    assert (await engine.create("clean", "again")).branch == "aidp/clean"


async def test_remove_refuses_uncommitted_changes_unless_forced(engine: Engine) -> None:
    ws = await engine.create("dirty", "t")
    (Path(ws.path) / "new.txt").write_text("unsaved")
    (Path(ws.path) / "README.md").write_text("changed")
    with pytest.raises(Refused, match="uncommitted changes") as info:
        await engine.remove("dirty")
    assert "new.txt" in str(info.value) and "README.md" in str(info.value)
    assert (Path(ws.path) / "new.txt").exists()
    assert (await engine.get("dirty")).slug == "dirty"

    notes = await engine.remove("dirty", force=True)
    assert any(n.startswith("discarded:") and "uncommitted" in n for n in notes)
    assert not Path(ws.path).exists()
    with pytest.raises(UnknownSlugs):
        await engine.get("dirty")


async def test_remove_with_delete_branch_refuses_unmerged_commits_unless_forced(engine: Engine, repo: Path) -> None:
    ws = await engine.create("work", "t")
    (Path(ws.path) / "feature.txt").write_text("feature\n")
    git(Path(ws.path), "add", "feature.txt")
    git(Path(ws.path), "commit", "-q", "-m", "feature")

    with pytest.raises(Refused, match="1 commit\\(s\\) not merged"):
        await engine.remove("work", delete_branch=True)
    assert Path(ws.path).exists()
    assert branches(repo) == ["aidp/work"]

    notes = await engine.remove("work", delete_branch=True, force=True)
    assert any("deleted branch aidp/work" in n for n in notes)
    assert any(n.startswith("discarded:") and "not merged" in n for n in notes)
    assert branches(repo) == []
    assert not Path(ws.path).exists()


async def test_remove_with_delete_branch_when_merged(engine: Engine, repo: Path) -> None:
    ws = await engine.create("merged", "t")
    notes = await engine.remove("merged", delete_branch=True)
    assert any("deleted branch aidp/merged" in n for n in notes)
    assert not any(n.startswith("discarded") for n in notes)
    assert branches(repo) == [] and not Path(ws.path).exists()


async def test_remove_refuses_a_running_workstream(engine: Engine, markers: Path) -> None:
    release = markers / "release"
    ws = await engine.create(
        "busy", "t", command=["sh", "-c", f"touch {markers}/started; while [ ! -e {release} ]; do sleep 0.05; done"]
    )
    run = await engine.start(["busy"])
    await wait_file(markers / "started")
    with pytest.raises(Busy, match="cannot remove: already running: busy"):
        await engine.remove("busy", force=True)
    assert Path(ws.path).exists()
    release.touch()
    assert (await engine.wait(run)).ok
    await engine.remove("busy")
    assert not Path(ws.path).exists()


async def test_remove_when_the_worktree_is_already_gone(engine: Engine, repo: Path) -> None:
    ws = await engine.create("gone", "t", command=["true"])
    subprocess.run(["rm", "-rf", ws.path], check=True)
    # Running it says what to fix, and removing it still works.
    summary = await engine.run(["gone"])
    assert summary.results[0].status == Status.ERROR
    assert summary.results[0].error is not None and "worktree" in summary.results[0].error
    await engine.remove("gone")
    assert "gone" not in git(repo, "worktree", "list")


async def test_remove_with_delete_branch_when_the_base_branch_is_gone(engine: Engine, repo: Path) -> None:
    """A deleted base branch must not make unmerged work look merged (it did: `git log` failed
    quietly and the branch went with its commits)."""
    git(repo, "branch", "develop")
    ws = await engine.create("orphaned", "t", base_branch="develop")
    await engine.create("untouched", "t", base_branch="develop")
    (Path(ws.path) / "work.txt").write_text("work\n")
    git(Path(ws.path), "add", "work.txt")
    git(Path(ws.path), "commit", "-q", "-m", "work")
    git(repo, "branch", "-D", "develop")

    with pytest.raises(Refused, match=r"1 commit\(s\) not merged"):
        await engine.remove("orphaned", delete_branch=True)
    assert "aidp/orphaned" in branches(repo) and Path(ws.path).exists()
    # Nothing of its own on the branch: nothing to lose, no refusal.
    notes = await engine.remove("untouched", delete_branch=True)
    assert not any(n.startswith("discarded") for n in notes)
    notes = await engine.remove("orphaned", delete_branch=True, force=True)
    assert any("not merged" in n for n in notes) and branches(repo) == []


async def test_create_refuses_a_leftover_worktree_folder(engine: Engine, repo: Path) -> None:
    leftover = repo / ".worktrees" / "left"
    leftover.mkdir(parents=True)
    (leftover / "keep.txt").write_text("mine")
    with pytest.raises(Refused, match="already exists"):
        await engine.create("left", "t")
    assert (leftover / "keep.txt").read_text() == "mine"
    assert await engine.workstreams() == [] and branches(repo) == []


async def test_unreadable_config_is_a_config_error(engine: Engine, repo: Path) -> None:
    await engine.create("good", "t", command=["true"])
    (repo / ".aidp" / "config.toml").mkdir()
    with pytest.raises(ConfigError, match="cannot read it"):
        await engine.start(["good"])
    await _nothing_ran(engine, repo, "good")
    await (await Engine.open(repo)).close()  # opening still works
