"""Review and land: what a workstream changed, whether it collides with its base branch or with
other workstreams, and landing it on a branch, all without checking anything out.

Every result is built in git's object store (`git merge-tree --write-tree`, `git commit-tree`) and
published by one compare-and-swap of the target ref (`git update-ref <ref> <new> <old>`), so a
refusal or a conflict leaves every ref, index and worktree as it was, and a branch someone moved
meanwhile is never overwritten. Needs git >= 2.38 (`merge-tree --write-tree`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from aidp.engine import gitrepo, toolrun
from aidp.engine.dirty import DirtyCache
from aidp.engine.errors import AidpError, Busy, CannotLand, GitError, InvalidInput, Refused
from aidp.engine.events import ListChanged, StatusChanged
from aidp.engine.model import (
    BaseConflict,
    ChangeSummary,
    ConflictReport,
    Diff,
    FileChange,
    LandResult,
    PairConflict,
    PushResult,
    Status,
    SyncResult,
    Workstream,
)

if TYPE_CHECKING:
    from aidp.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger(__name__)

DIFF_MAX_BYTES = 1024 * 1024
GIT_CONCURRENCY = 8  # git processes at once when every workstream (or pair) is looked at
STRATEGIES = ("merge", "squash", "rebase")
SYNC_STRATEGIES = ("rebase", "merge")
_CHUNK = 64 * 1024
_AUTHOR_RE = re.compile(r"^author (?P<name>.*) <(?P<email>.*)> (?P<date>\d+ [+-]\d{4})$", re.MULTILINE)


class Conflict(Exception):
    """A merge or a replayed commit would conflict in `files`; `detail` says which step."""

    def __init__(self, files: list[str], detail: str) -> None:
        super().__init__(detail)
        self.files = files
        self.detail = detail


async def run_git(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """git's exit status, stdout and stderr: for commands whose status is an answer (merge-tree
    exits 1 on a conflict, update-ref fails when the ref moved)."""
    return await run_process(cwd, "git", *args, env=env, stdin=stdin)


async def run_process(
    cwd: Path, *argv: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """A program's exit status, stdout and stderr (an argument list, never a shell)."""
    code, out, err = await toolrun.run(list(argv), cwd, env, stdin)
    return code, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def git_bounded(cwd: Path, *args: str, limit: int, env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """git's stdout up to `limit` bytes, and whether it was cut: a huge diff is never held whole."""
    async with toolrun.started(["git", *args], cwd, env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        data = bytearray()
        while len(data) <= limit and (chunk := await proc.stdout.read(_CHUNK)):
            data += chunk
        cut = len(data) > limit
        if cut:
            proc.kill()
        err = await proc.stderr.read()
        await proc.wait()
    if not cut and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    return bytes(data[:limit]).decode(errors="replace"), cut


async def gather_bounded(coros: Iterable[Awaitable[T]], limit: int = GIT_CONCURRENCY) -> list[T]:
    """`asyncio.gather` with at most `limit` running at once: 190 pairs never fork 190 gits."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


# -- reading ---------------------------------------------------------------------------------


async def base_of(root: Path, ws: Workstream, override: str | None = None) -> str:
    """The branch a workstream is compared with and lands into: `override`, else the one recorded
    at creation, else (older records) the branch checked out in the main worktree."""
    base = override or ws.base_branch or await gitrepo.current_branch(root)
    if base is None:
        raise Refused(f"{ws.slug} has no base branch and HEAD is detached: name one (--base or --into)")
    return base


async def head_of(root: Path, ws: Workstream) -> str:
    out = await gitrepo.git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{ws.branch}^{{commit}}", check=False)
    if not out.strip():
        raise Refused(f"the branch {ws.branch} of {ws.slug} no longer exists")
    return out.strip()


async def is_ancestor(root: Path, a: str, b: str) -> bool:
    code, _, _ = await run_git(root, "merge-base", "--is-ancestor", a, b)
    return code == 0


async def merge_tree(root: Path, ours: str, theirs: str) -> tuple[str, list[str]]:
    """The merged tree of two commits and the conflicting files (none when clean), computed in the
    object store only."""
    code, out, err = await run_git(
        root, "merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", ours, theirs
    )
    if code not in (0, 1):
        raise GitError(f"git merge-tree {ours} {theirs} failed (review and land need git 2.38 or later): {err or code}")
    tree, *files = [f for f in out.split("\0") if f]
    return tree, files if code == 1 else []


async def file_changes(cwd: Path, *spec: str, env: Mapping[str, str] | None = None) -> list[FileChange]:
    """Changed files with line counts for `git diff <spec>` (renames detected)."""
    _, numstat, _ = await _checked(cwd, "diff", "-z", "-M", "--numstat", *spec, env=env)
    _, names, _ = await _checked(cwd, "diff", "-z", "-M", "--name-status", *spec, env=env)
    counts = iter(line_counts(numstat))
    fields = iter(names.split("\0"))
    changes = []
    for status in fields:
        if not status:
            break
        paths = [next(fields)] + ([next(fields)] if status[0] in "RC" else [])
        added, removed = next(counts)
        changes.append(
            FileChange(
                path=paths[-1],
                status=status[0],
                added=added,
                removed=removed,
                old_path=paths[0] if len(paths) == 2 else None,
            )
        )
    return changes


def line_counts(numstat: str) -> list[tuple[int | None, int | None]]:
    """Lines added and removed per file from `git diff -z --numstat` (None for a binary file)."""
    tokens = iter(numstat.split("\0"))
    counts: list[tuple[int | None, int | None]] = []
    for token in tokens:
        if not token:
            break
        added, removed, path = token.split("\t", 2)
        if not path:  # a rename or copy: "added\tremoved\t\0old\0new"
            next(tokens), next(tokens)
        counts.append((None, None) if added == "-" else (int(added), int(removed)))
    return counts


async def _checked(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    code, out, err = await run_git(cwd, *args, env=env)
    if code != 0:
        raise GitError(f"git {' '.join(args)} failed: {err or f'exit status {code}'}")
    return code, out, err


@dataclass(frozen=True)
class Refs:
    """Every local branch's commit and the main worktree's branch, read once for a whole list."""

    heads: dict[str, str]
    current: str | None

    @classmethod
    async def read(cls, root: Path) -> Refs:
        return cls(await branch_heads(root), await gitrepo.current_branch(root))

    async def commit(self, root: Path, ref: str) -> str:
        return self.heads.get(ref) or await gitrepo.resolve_commit(root, ref)


async def has_uncommitted(path: Path, head: str) -> bool:
    """Whether `git status` shows anything in the worktree (`head`: its branch's commit)."""
    return bool(await gitrepo.status_short(path))


async def summary(
    root: Path,
    ws: Workstream,
    refs: Refs | None = None,
    has_work: Callable[[Path, str], Awaitable[bool]] = has_uncommitted,
) -> ChangeSummary:
    """Commits ahead and behind the base branch, lines and files changed since the merge-base,
    uncommitted work, and whether it would merge cleanly into the base branch as it is now. Runs
    for every workstream of every list, so what depends on commits alone is computed once per pair
    of commits (`_committed`); only the worktree's status is asked each time (`has_work`)."""
    refs = refs or await Refs.read(root)
    base = ws.base_branch or refs.current
    if base is None:
        raise Refused(f"{ws.slug} has no base branch and HEAD is detached")
    base_commit = await refs.commit(root, base)
    head = refs.heads.get(ws.branch)
    if head is None:
        raise Refused(f"the branch {ws.branch} of {ws.slug} no longer exists")
    committed = await _committed(root, base_commit, head)
    worktree = Path(ws.path)
    dirty = (worktree / ".git").exists() and await has_work(worktree, head)
    return msgspec.structs.replace(committed, base_branch=base, dirty=dirty)


def _kept_summary(
    ws: Workstream, base: str | None, pair: tuple[str, str] | None, kept: Mapping[str, bool]
) -> ChangeSummary | None:
    """`summary` without a task or a git process, when its pair of commits (`_pair_of`) and its
    worktree's state are both known already (most of a list at thousands of workstreams; a task
    each cost more than the rest of the list); None when git is to be asked (or `summary` to
    refuse)."""
    committed = _COMMITTED.get(pair) if pair is not None else None
    if committed is None:
        return None
    if ws.worktree_missing:  # as `changes_of`'s records say (`Engine._with_worktree_state`)
        dirty = False
    elif (known := kept.get(ws.path)) is None:
        return None
    else:
        dirty = known
    return msgspec.structs.replace(committed, base_branch=base, dirty=dirty)


def _pair_of(ws: Workstream, refs: Refs) -> tuple[str | None, tuple[str, str] | None]:
    """The base branch a workstream is compared with, and (base commit, branch head) when both are
    branches `refs` holds."""
    base = ws.base_branch or refs.current
    base_commit = refs.heads.get(base) if base is not None else None
    head = refs.heads.get(ws.branch)
    return base, (base_commit, head) if base_commit is not None and head is not None else None


async def _commit_pairs(root: Path, pairs: Iterable[tuple[str, str] | None]) -> None:
    """Compute each of these pairs of commits (`_committed`) once, first: a fresh process (every
    CLI list) knows none, and without this each of thousands of workstreams on a handful of
    commits took a task of its own only to find its pair kept by another's. A pair git fails on
    is left to the workstream's own summary, which says why."""
    missing = {pair for pair in pairs if pair is not None and pair not in _COMMITTED}

    async def one(base_commit: str, head: str) -> None:
        with contextlib.suppress(AidpError):
            await _committed(root, base_commit, head)

    await gather_bounded(one(*pair) for pair in missing)


# Commits never change, so what two commits give is kept (bounded; the oldest goes first).
_COMMITTED: dict[tuple[str, str], ChangeSummary] = {}
COMMITTED_MAX = 4096


async def _committed(root: Path, base_commit: str, head: str) -> ChangeSummary:
    """The part of a summary that depends on the two commits alone (`base_branch` and `dirty` are
    filled by the caller)."""
    key = (base_commit, head)
    if (known := _COMMITTED.get(key)) is not None:
        return known
    mb: str | None = head
    ahead = behind = 0
    if head != base_commit:
        mb = await gitrepo.merge_base(root, base_commit, head)
        _, counts, _ = await _checked(root, "rev-list", "--left-right", "--count", f"{base_commit}...{head}")
        behind, ahead = (int(n) for n in counts.split())
    stats = (await gitrepo.git(root, "diff", "-z", "-M", "--numstat", mb or base_commit, head)) if ahead else ""
    counted = line_counts(stats)
    conflicts = (
        None if mb is None else ahead > 0 and behind > 0 and bool((await merge_tree(root, base_commit, head))[1])
    )
    result = ChangeSummary(
        base_branch="",
        merge_base=mb,
        ahead=ahead,
        behind=behind,
        files=len(counted),
        added=sum(a or 0 for a, _ in counted),
        removed=sum(r or 0 for _, r in counted),
        dirty=False,
        conflicts=conflicts,
    )
    if len(_COMMITTED) >= COMMITTED_MAX:
        del _COMMITTED[next(iter(_COMMITTED))]
    _COMMITTED[key] = result
    return result


@dataclass(frozen=True)
class Uncommitted:
    files: list[FileChange]
    patch: str
    truncated: bool


async def uncommitted(path: Path, max_bytes: int) -> Uncommitted:
    """The worktree's uncommitted work (staged, unstaged and untracked) against its HEAD, read
    through a scratch copy of its index so the real index is never touched."""
    if not (path / ".git").exists():
        return Uncommitted([], "", False)
    index = Path((await gitrepo.git(path, "rev-parse", "--path-format=absolute", "--git-path", "index")).strip())
    with tempfile.TemporaryDirectory(prefix="aidp-index-") as scratch:
        copy = Path(scratch) / "index"
        if index.exists():
            shutil.copyfile(index, copy)
        env = {**os.environ, "GIT_INDEX_FILE": str(copy)}
        await _checked(path, "add", "-A", env=env)
        files = await file_changes(path, "--cached", "HEAD", env=env)
        patch, cut = await git_bounded(path, "diff", "--cached", "-M", "HEAD", limit=max_bytes, env=env)
    return Uncommitted(files, patch, cut)


@dataclass(frozen=True)
class Footprint:
    """What a workstream's branch did since it forked from its base branch, and whether that
    merges into the base as it is now: enough to rule out most pairs without merging them."""

    slug: str
    base: BaseConflict
    head: str
    fork: str | None  # the merge-base with the base branch
    commits: frozenset[str]  # fork..head
    changed: frozenset[str]  # paths changed from fork to head (a rename as both of its paths)
    reach: frozenset[str]  # those paths and every folder above them


async def footprint(root: Path, ws: Workstream, base: str, base_commit: str, head: str) -> Footprint:
    fork = await gitrepo.merge_base(root, base_commit, head)
    files = [] if fork == base_commit else (await merge_tree(root, base_commit, head))[1]  # else a fast-forward
    commits: list[str] = []
    changed: list[str] = []
    if fork is not None:  # every commit since the fork and the paths it touched (merges against each parent)
        log_lines = await gitrepo.git(
            root, "log", "-m", "--no-renames", "--name-only", "--format=%x00%H", f"{fork}..{head}"
        )
        for entry in log_lines.split("\0")[1:]:
            commit, *paths = entry.split("\n")
            commits.append(commit)
            changed += [p for p in paths if p]
    folders = {"/".join(parts[:i]) for p in changed for parts in [p.split("/")] for i in range(1, len(parts))}
    return Footprint(
        slug=ws.slug,
        base=BaseConflict(slug=ws.slug, base_branch=base, clean=not files, files=files),
        head=head,
        fork=fork,
        commits=frozenset(commits),
        changed=frozenset(changed),
        reach=frozenset(changed) | folders,
    )


async def branch_heads(root: Path) -> dict[str, str]:
    """Every local branch's commit, in one git command."""
    out = await gitrepo.git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    return {
        ref.removeprefix("refs/heads/"): commit for commit, ref in (line.split(" ", 1) for line in out.splitlines())
    }


def may_conflict(a: Footprint, b: Footprint) -> bool:
    """False only when a merge of the two cannot conflict. When both forked from the same commit
    and share no commit after it, that commit is their merge-base, so the merge sees exactly
    their changes since it: a conflict needs a path both changed, or a path one changed that is
    a folder of a path the other changed (a file/directory conflict)."""
    if a.fork is None or a.fork != b.fork or a.commits & b.commits:
        return True
    return bool(a.changed & b.reach or b.changed & a.reach)


async def pair_conflict(root: Path, a: Footprint, b: Footprint) -> PairConflict | None:
    """Whether two workstreams' branches would conflict with each other (their heads merged)."""
    if not may_conflict(a, b):
        return None
    _, files = await merge_tree(root, a.head, b.head)
    return PairConflict(a=a.slug, b=b.slug, files=files) if files else None


# -- writing ---------------------------------------------------------------------------------


async def commit_tree(
    root: Path, tree: str, parents: list[str], message: str, env: Mapping[str, str] | None = None
) -> str:
    args = [arg for p in parents for arg in ("-p", p)]
    code, out, err = await run_git(root, "commit-tree", tree, *args, "-F", "-", env=env, stdin=message.encode())
    if code != 0:
        raise GitError(f"git commit-tree failed: {err or f'exit status {code}'}")
    return out.strip()


async def merged(root: Path, onto: str, head: str, message: str, against: str, first_parent_only: bool = False) -> str:
    """A merge commit of `head` into `onto` (parents onto, head), or with `first_parent_only` the
    same tree as a single commit on `onto` (a squash). `against` names `onto` in a refusal."""
    tree, files = await merge_tree(root, onto, head)
    if files:
        raise Conflict(files, f"it conflicts with {against}")
    return await commit_tree(root, tree, [onto] if first_parent_only else [onto, head], message)


async def replayed(root: Path, onto: str, head: str, against: str) -> str:
    """`head`'s commits not in `onto`, replayed one by one on `onto` (authors, dates and messages
    kept; merges skipped and commits that become empty dropped, as `git rebase` does). Each step is
    a three-way merge whose base is the commit's parent: a stand-in commit with the current tree
    and that parent makes `merge-tree` pick it (git 2.39 has no `merge-tree --merge-base`)."""
    if await is_ancestor(root, onto, head):
        return head  # nothing to replay over: the commits stay as they are
    _, listing, _ = await _checked(root, "rev-list", "--reverse", "--no-merges", "--parents", f"{onto}..{head}")
    current = onto
    for line in listing.splitlines():
        commit, *parents = line.split()
        if len(parents) != 1:
            raise Conflict([], f"its root commit {commit[:12]} cannot be replayed on {against}")
        current_tree = await _tree(root, current)
        stand_in = await commit_tree(root, current_tree, parents, "aidp: replay base")
        tree, files = await merge_tree(root, stand_in, commit)
        if files:
            subject = await _subject(root, commit)
            raise Conflict(files, f"its commit {commit[:12]} ({subject}) conflicts with {against} when replayed")
        if tree == current_tree:
            continue
        env, message = await _authored(root, commit)
        current = await commit_tree(root, tree, [current], message, env=env)
    return current


async def _tree(root: Path, commit: str) -> str:
    return (await gitrepo.git(root, "rev-parse", f"{commit}^{{tree}}")).strip()


async def _subject(root: Path, commit: str) -> str:
    return (await gitrepo.git(root, "log", "-1", "--format=%s", commit)).strip()


async def _authored(root: Path, commit: str) -> tuple[dict[str, str], str]:
    """The environment that keeps `commit`'s author and date, and its message, byte for byte."""
    raw = await gitrepo.git(root, "cat-file", "commit", commit)
    headers, _, message = raw.partition("\n\n")
    found = _AUTHOR_RE.search(headers)
    if found is None:
        raise GitError(f"cannot read the author of commit {commit}")
    author = {
        "GIT_AUTHOR_NAME": found["name"],
        "GIT_AUTHOR_EMAIL": found["email"],
        "GIT_AUTHOR_DATE": found["date"],
    }
    return {**os.environ, **author}, message


async def check_holders(root: Path, branch: str, old: str, new: str) -> list[Path]:
    """The worktrees that have `branch` checked out, which follow it when it moves. Refuses
    (`Conflict`) unless each can go from `old` to `new`: no uncommitted change to a tracked file,
    no untracked file in the way."""
    found = [w.path for w in await gitrepo.worktrees(root) if w.branch == branch and w.path.exists()]
    if not found:
        return []
    _, added, _ = await _checked(root, "diff", "-z", "--name-only", "--no-renames", "--diff-filter=A", old, new)
    for path in found:
        _, dirty, _ = await _checked(path, "status", "--porcelain", "-z", "--untracked-files=no")
        if dirty:
            files = [entry[3:] for entry in dirty.split("\0") if entry[3:]]
            raise Conflict(files, f"{branch} is checked out in {path}, which has uncommitted changes")
        blocking = [p for p in added.split("\0") if p and os.path.lexists(path / p)]
        if blocking:
            raise Conflict(blocking, f"{branch} is checked out in {path}, where untracked files are in the way")
    return found


async def move_branch(
    root: Path,
    branch: str,
    old: str,
    new: str,
    reason: str,
    following: list[Path],
    then: Callable[[], Awaitable[object]] | None = None,
) -> str | None:
    """Point `branch` from `old` to `new` only if it still is at `old`, then bring the worktrees
    that have it checked out along, then `then` (what records the move). Never cut short
    (`uninterrupted`). Why it did not move, if it did not (nothing changed then): someone moved it
    meanwhile, or git refused (a `reference-transaction` hook said no)."""

    async def move() -> str | None:
        code, _, err = await run_git(root, "update-ref", "-m", reason, f"refs/heads/{branch}", new, old)
        if code != 0:
            _, now, _ = await run_git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
            if now.strip() != old:
                return f"{branch} moved meanwhile (someone else updated it); try again"
            return f"git refused to move {branch}: {err.strip() or f'git update-ref exited {code}'}"
        for path in following:
            code, _, err = await run_git(path, "read-tree", "-m", "-u", old, new)
            if code != 0:
                raise GitError(
                    f"{branch} moved to {new[:12]}, but its worktree {path} could not follow: {err}\n"
                    f"(there, 'git status' shows the difference; 'git reset --keep {branch}' updates it)"
                )
        if then is not None:
            await then()
        return None

    return await uninterrupted(move())


async def uninterrupted(work: Awaitable[T]) -> T:
    """`work` run to its end even when its caller is cancelled (Ctrl-C, a client gone): a branch
    move cut short would leave the branch moved under a stale checkout, or a land unrecorded. A
    cancellation ends the git hooks the work waits on (`reference-transaction`), not git, which then
    finishes; it is raised again once the work is done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await toolrun.end_hooks(toolrun.GRACE_S)
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: what is raised here is the cancellation
        raise


async def start_from(root: Path, ws: Workstream, deps: list[Workstream]) -> str:
    """`--base-from-deps`: bring the dependencies' work into `ws`'s branch before it runs (a
    fast-forward where it has nothing of its own, else a merge per dependency), so chained work
    builds on earlier work. Returns what it started from, for its events; refuses (`Refused`) with
    the conflicting files, having changed nothing."""
    head = await head_of(root, ws)
    new, named = head, []
    try:
        for dep in deps:
            dep_head = await head_of(root, dep)
            named.append(f"{dep.branch} at {dep_head[:12]}")
            if await is_ancestor(root, dep_head, new):
                continue
            if await is_ancestor(root, new, dep_head):
                new = dep_head
            else:
                new = await merged(root, new, dep_head, f"Merge {dep.branch} into {ws.branch}\n", dep.branch)
        following = await check_holders(root, ws.branch, head, new) if new != head else []
    except Conflict as exc:
        raise Refused(
            f"cannot start {ws.slug} from its dependencies: {exc.detail}:\n{gitrepo.listed(exc.files)}"
        ) from None
    if new != head and (
        why := await move_branch(root, ws.branch, head, new, f"aidp: {ws.slug} from its dependencies", following)
    ):
        raise Refused(f"cannot start {ws.slug} from its dependencies: {why} (nothing changed)")
    return f"started from {', '.join(named)}: {ws.branch} at {new[:12]}"


def check_strategy(strategy: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(strategy, str) or strategy not in allowed:
        raise InvalidInput(f"strategy must be one of {', '.join(allowed)}, got {strategy!r}")
    return strategy


def check_max_bytes(max_bytes: object) -> int:
    if max_bytes is None:
        return DIFF_MAX_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InvalidInput(f"maxBytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


def check_ref_name(value: object, what: str) -> str:
    """A branch or remote name from outside: never an option to git."""
    if not isinstance(value, str) or not value or value.startswith("-") or "\0" in value or "\n" in value:
        raise InvalidInput(f"invalid {what} {value!r}")
    return value


# -- the operations behind the Engine's methods --------------------------------------------------


async def changes_of(engine: Engine, workstreams: list[Workstream], everything: bool = False) -> list[Workstream]:
    """The records with `changes` filled, computed concurrently; a workstream whose branch or base
    is gone keeps `changes` None rather than failing the whole list. Uncommitted work is what git
    said last time wherever nothing changed since (`DirtyCache`); `everything`: these are all the
    workstreams, so what is kept for others is dropped. The records' `worktree_missing` is trusted
    (they come from `Engine.workstreams` or `Engine.get`)."""

    try:
        refs = await Refs.read(engine.root)
    except AidpError as exc:
        log.warning("no change summaries: %s", exc)
        return workstreams
    # Off the event loop: it reads dirty.json (2 MB at 10,000 worktrees) and may ask git where it is.
    cache = await asyncio.to_thread(lambda: DirtyCache(engine.state_dir, gitrepo.common_dir(engine.root)))
    pairs = [(ws.path, refs.heads.get(ws.branch, "")) for ws in workstreams]
    kept = await asyncio.to_thread(cache.reusable, pairs)

    async def has_work(path: Path, head: str) -> bool:
        if (dirty := kept.get(str(path))) is not None:
            return dirty
        asked = time.time_ns()
        dirty = await has_uncommitted(path, head)
        cache.record(path, head, asked, dirty)
        return dirty

    async def one(ws: Workstream) -> Workstream:
        try:
            return msgspec.structs.replace(ws, changes=await summary(engine.root, ws, refs, has_work))
        except AidpError as exc:
            log.info("%s: no change summary: %s", ws.slug, exc)
            return ws

    compared = [_pair_of(ws, refs) for ws in workstreams]
    await _commit_pairs(engine.root, (pair for _, pair in compared))
    known = [_kept_summary(ws, base, pair, kept) for ws, (base, pair) in zip(workstreams, compared, strict=True)]
    asked = iter(await gather_bounded(one(ws) for ws, s in zip(workstreams, known, strict=True) if s is None))
    found = [
        next(asked) if s is None else msgspec.structs.replace(ws, changes=s)
        for ws, s in zip(workstreams, known, strict=True)
    ]
    if everything:
        cache.forget_except(path for path, _ in pairs)
    await asyncio.to_thread(cache.save)
    return found


async def diff(engine: Engine, slug: str, base: str | None, max_bytes: int | None) -> Diff:
    limit = check_max_bytes(max_bytes)
    ws = await engine.get(slug, changes=False)
    base = await base_of(engine.root, ws, check_ref_name(base, "base branch") if base is not None else None)
    base_commit = await gitrepo.resolve_commit(engine.root, base)
    head = await head_of(engine.root, ws)
    mb = await gitrepo.merge_base(engine.root, base_commit, head)
    since = mb or base_commit
    files = await file_changes(engine.root, since, head)
    patch, cut = await git_bounded(engine.root, "diff", "-M", since, head, limit=limit)
    work = await uncommitted(Path(ws.path), limit)
    return Diff(
        slug=slug,
        base_branch=base,
        merge_base=mb,
        head=head,
        files=files,
        patch=patch,
        uncommitted=work.files,
        uncommitted_patch=work.patch,
        truncated=cut or work.truncated,
    )


async def conflicts(engine: Engine, slugs: list[str] | None) -> ConflictReport:
    """Each workstream against its base branch as it is now, and every pair against each other
    (their branch heads merged; uncommitted work is not part of it: `changes.dirty` says it)."""
    if slugs is None:
        chosen = [ws for ws in await engine.workstreams(changes=False) if ws.status != Status.LANDED]
    else:
        chosen = [await engine.get(slug, changes=False) for slug in dict.fromkeys(slugs)]
    root = engine.root
    heads = await branch_heads(root)
    missing = [ws.branch for ws in chosen if ws.branch not in heads]
    if missing:
        raise Refused(f"these workstream branches no longer exist: {', '.join(missing)}")
    bases = {ws.slug: await base_of(root, ws) for ws in chosen}
    commits = {base: await gitrepo.resolve_commit(root, base) for base in set(bases.values())}
    feet = await gather_bounded(
        footprint(root, ws, bases[ws.slug], commits[bases[ws.slug]], heads[ws.branch]) for ws in chosen
    )
    pairs = await gather_bounded(pair_conflict(engine.root, a, b) for i, a in enumerate(feet) for b in feet[i + 1 :])
    return ConflictReport(with_base=[f.base for f in feet], pairs=[p for p in pairs if p is not None])


async def land(engine: Engine, slugs: list[str], strategy: str, into: str | None, rm: bool) -> list[LandResult]:
    """Land each workstream in the order given, stopping at the first that cannot (`CannotLand`,
    naming those landed before it)."""
    check_strategy(strategy, STRATEGIES)
    if not isinstance(slugs, list) or not slugs:
        raise InvalidInput("name at least one workstream to land")
    target_name = check_ref_name(into, "target branch") if into is not None else None
    for slug in slugs:  # every slug known before anything lands
        await engine.get(slug, changes=False)
    landed: list[LandResult] = []
    for slug in dict.fromkeys(slugs):
        try:
            if (ws := await engine.get(slug, changes=False)).status.in_flight:
                raise CannotLand(slug, f"it is {ws.status}; wait for it or cancel it")
            async with engine._holding(slug, "land"):  # no run starts meanwhile, no other land or removal
                result = await _land_one(engine, await engine.get(slug, changes=False), strategy, target_name)
        except Busy as exc:
            raise CannotLand(slug, str(exc), [], landed) from None
        except Conflict as exc:
            raise CannotLand(slug, exc.detail, exc.files, landed) from None
        except CannotLand as exc:
            raise CannotLand(slug, exc.reason, exc.files, landed) from None
        engine.events.emit(StatusChanged(run_id=None, slug=slug, status=Status.LANDED))
        engine.events.emit(ListChanged())
        if rm:
            await engine.remove(slug, delete_branch=True)
            result = msgspec.structs.replace(result, removed=True)
        landed.append(result)
    return landed


async def _land_one(engine: Engine, ws: Workstream, strategy: str, into: str | None) -> LandResult:
    root = engine.root
    if ws.worktree_missing:
        raise CannotLand(ws.slug, f"its worktree {ws.path} is missing")
    if dirty := await gitrepo.status_short(Path(ws.path)):
        files = [line[3:] for line in dirty.splitlines()]
        raise CannotLand(ws.slug, "its worktree has uncommitted changes (commit or discard them first)", files)
    target = await base_of(root, ws, into)
    if not await gitrepo.branch_exists(root, target):
        raise CannotLand(ws.slug, f"the target {target!r} is not a local branch (name one with --into)")
    old = (await gitrepo.git(root, "rev-parse", f"refs/heads/{target}")).strip()
    head = await head_of(root, ws)
    if await is_ancestor(root, head, old):
        raise CannotLand(ws.slug, f"{target} already has every commit of {ws.branch}: nothing to land")
    new = await build(root, ws, strategy, target, old, head)
    following = await check_holders(root, target, old, new)

    async def record() -> None:
        await engine.db.call(engine.db.store.mark_landed, ws.slug, new, f"landed into {target} ({strategy})")

    reason = f"aidp: land {ws.slug} ({strategy})"
    if why := await move_branch(root, target, old, new, reason, following, record):
        raise CannotLand(ws.slug, f"{why} (nothing changed)")
    return LandResult(slug=ws.slug, into=target, strategy=strategy, commit=new)


async def build(root: Path, ws: Workstream, strategy: str, target: str, old: str, head: str) -> str:
    """The target branch's new head for `strategy`, built in the object store."""
    if strategy == "rebase":
        return await replayed(root, old, head, target)
    task = ws.task.strip()
    if strategy == "merge":
        return await merged(
            root, old, head, f"Merge workstream {ws.slug} ({ws.branch}) into {target}\n\n{task}\n", target
        )
    _, log_lines, _ = await _checked(root, "log", "--format=  %h %s", f"{old}..{head}")
    title = task.splitlines()[0][:60]
    message = f"{ws.slug}: {title}\n\n{task}\n\nSquashed from {ws.branch}:\n{log_lines}"
    return await merged(root, old, head, message, target, first_parent_only=True)


async def sync(engine: Engine, slug: str, strategy: str) -> SyncResult:
    """Bring the workstream's branch up to date with its base, inside its worktree; refuses (and
    changes nothing) while it runs, when it has uncommitted changes, or on a conflict."""
    check_strategy(strategy, SYNC_STRATEGIES)
    if (ws := await engine.get(slug, changes=False)).status.in_flight:
        raise Refused(f"cannot sync {slug}: it is {ws.status}")
    async with engine._holding(slug, "sync"):  # no run starts meanwhile
        result = await _sync_held(engine, await engine.get(slug, changes=False), strategy)
    engine.events.emit(ListChanged())
    return result


async def _sync_held(engine: Engine, ws: Workstream, strategy: str) -> SyncResult:
    slug, root = ws.slug, engine.root
    if ws.worktree_missing:
        raise Refused(f"cannot sync {slug}: its worktree {ws.path} is missing")
    if dirty := await gitrepo.status_short(Path(ws.path)):
        raise Refused(f"cannot sync {slug}: its worktree has uncommitted changes:\n{dirty.rstrip()}")
    base = await base_of(root, ws)
    base_commit = await gitrepo.resolve_commit(root, base)
    head = await head_of(root, ws)
    if await is_ancestor(root, base_commit, head):
        return SyncResult(slug=slug, strategy=strategy, head=head)  # already up to date
    try:
        if await is_ancestor(root, head, base_commit):
            new = base_commit  # nothing of its own yet: fast-forward
        elif strategy == "rebase":
            new = await replayed(root, base_commit, head, base)
        else:
            new = await merged(root, head, base_commit, f"Merge {base} into {ws.branch}\n", base)
        following = await check_holders(root, ws.branch, head, new)
    except Conflict as exc:
        raise Refused(f"cannot sync {slug}: {exc.detail}:\n{gitrepo.listed(exc.files)}") from None
    if why := await move_branch(root, ws.branch, head, new, f"aidp: sync {slug} ({strategy})", following):
        raise Refused(f"cannot sync {slug}: {why} (nothing changed)")
    return SyncResult(slug=slug, strategy=strategy, head=new)


async def push(engine: Engine, slug: str, remote: str, pr: bool) -> PushResult:
    """Push the workstream's branch; with `pr`, open a pull request with the GitHub CLI (checked
    before anything is pushed)."""
    check_ref_name(remote, "remote")
    ws = await engine.get(slug, changes=False)
    if pr:
        await _check_gh(engine.root)
    ref = f"refs/heads/{ws.branch}"
    code, _, err = await run_git(engine.root, "push", "--porcelain", "--", remote, f"{ref}:{ref}")
    if code != 0:
        raise GitError(f"cannot push {ws.branch} to {remote}: {err or f'exit status {code}'}")
    url = await _open_pr(engine.root, ws, await base_of(engine.root, ws)) if pr else None
    return PushResult(slug=slug, remote=remote, branch=ws.branch, pr_url=url)


async def _check_gh(root: Path) -> None:
    if shutil.which("gh") is None:
        raise Refused(
            "--pr needs the GitHub CLI 'gh', which is not installed (https://cli.github.com); nothing was pushed"
        )
    code, _, err = await run_process(root, "gh", "auth", "status")
    if code != 0:
        raise Refused(f"--pr needs the GitHub CLI logged in ('gh auth login'): {err}; nothing was pushed")


async def _open_pr(root: Path, ws: Workstream, base: str) -> str:
    title = ws.task.strip().splitlines()[0][:72]
    args = ("pr", "create", "--head", ws.branch, "--base", base, "--title", title, "--body", ws.task)
    code, out, err = await run_process(root, "gh", *args)
    if code != 0:
        raise GitError(f"{ws.branch} was pushed, but 'gh pr create' failed: {err or f'exit status {code}'}")
    return out.strip().splitlines()[-1]
