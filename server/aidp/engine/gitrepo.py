"""The git operations aidp needs, run as argv lists (never a shell), asynchronously so a server's
event loop keeps serving while git works."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aidp.engine import toolrun
from aidp.engine.errors import GitError, InvalidRef, NotARepository

WORKTREES_DIR = ".worktrees"
STATE_DIR = ".aidp"
LISTED_MAX = 20  # paths listed in a refusal; the rest are counted


async def git(cwd: Path, *args: str, check: bool = True) -> str:
    code, out, err = await toolrun.run(["git", *args], cwd)
    if check and code != 0:
        reason = err.decode(errors="replace").strip() or f"exit status {code}, no message"
        raise GitError(f"git {' '.join(args)} failed: {reason}")
    return out.decode(errors="replace")


def _rev_parse(cwd: Path, *args: str) -> list[str] | None:
    """`git rev-parse` lines with absolute paths, or None when git refuses (not a repository,
    not a working tree)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotARepository(f"cannot look for a git repository at {cwd}: {exc}") from exc
    return out.stdout.splitlines() if out.returncode == 0 else None


def current_dir() -> Path:
    """The current directory: one removed under the process (a shell left in a removed worktree)
    is said, not a traceback."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise NotARepository("the current directory no longer exists (removed?): cd into the repository") from None


def find_root(start: Path) -> Path:
    """The main working tree's root, also from inside one of its linked worktrees (so `aidp` works
    from any directory of the repository, including a workstream's own checkout). `.git` may be a
    file (`git init --separate-git-dir`, a submodule checkout): its git dir is then elsewhere."""
    asked = ("--is-bare-repository", "--git-dir", "--git-common-dir")
    # One git call in a working tree; outside one (a bare repository, inside a git dir) git
    # refuses `--show-toplevel`, so ask again without it.
    found = _rev_parse(start, *asked, "--show-toplevel") or _rev_parse(start, *asked)
    if found is None:
        raise NotARepository(f"not inside a git repository: {start} (run 'git init' first, or cd into one)")
    bare, git_dir, common = found[0] == "true", Path(found[1]), Path(found[2])
    if bare:
        raise NotARepository(f"{start} is in a bare repository; aidp needs a working tree")
    top = Path(found[3]) if len(found) > 3 else None
    if top is not None and git_dir == common:
        return top  # the main working tree itself
    if common.name == ".git":
        return common.parent
    # A linked worktree of a repository whose git dir is elsewhere: git does not record where the
    # main working tree is, except as a submodule's core.worktree; aidp's own worktrees sit in it.
    candidates = [common / w for w in _config(common, "core.worktree")]
    if top is not None and top.parent.name == WORKTREES_DIR:
        candidates.append(top.parent.parent)
    for candidate in candidates:
        if _rev_parse(candidate, "--git-dir") == [str(common)]:
            return candidate.resolve()
    raise NotARepository(f"cannot find the main working tree of the repository around {start}; run aidp there")


def _config(git_dir: Path, key: str) -> list[str]:
    out = subprocess.run(
        ["git", f"--git-dir={git_dir}", "config", "--get", key],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.splitlines()


def common_dir(root: Path) -> Path:
    """The repository's own git dir: `<root>/.git` unless `.git` is a file pointing elsewhere."""
    if (root / ".git").is_dir():  # `root` is a main working tree (see find_root): its .git is the common dir
        return root / ".git"
    found = _rev_parse(root, "--git-common-dir")
    if found is None:
        raise NotARepository(f"not inside a git repository: {root}")
    return Path(found[0])


def ensure_ignored(root: Path, extra: str | None = None) -> None:
    """Keep aidp's own folders out of the user's `git status` without touching tracked files
    (`extra`: a configured worktrees folder inside the repository, as an exclude pattern)."""
    exclude = common_dir(root) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    wanted = (f"/{WORKTREES_DIR}/", f"/{STATE_DIR}/", *([extra] if extra else []))
    missing = [p for p in wanted if p not in lines]
    if missing:
        with exclude.open("a") as f:
            if lines and lines[-1] != "":
                f.write("\n")
            f.write("# aidp\n" + "".join(p + "\n" for p in missing))


async def branch_exists(root: Path, branch: str) -> bool:
    return bool((await git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)).strip())


async def resolve_commit(root: Path, ref: str) -> str:
    """The commit `ref` names. Anything else (an option, a range like `main..HEAD`, a tree) is
    refused here, before git could fail on it with a message that gives no reason."""
    if ref.startswith("-"):
        raise InvalidRef(f"invalid base branch {ref!r}: it must not start with '-'")
    out = await git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
    commit = out.strip()
    if not commit:
        raise InvalidRef(f"base branch {ref!r} does not exist or is not a commit (see 'git branch')")
    if len(commit.split()) != 1:
        raise InvalidRef(f"base branch {ref!r} names several commits; give one branch, tag or commit")
    return commit


@dataclass(frozen=True)
class Worktree:
    """One entry of `git worktree list`."""

    path: Path
    branch: str | None  # None when detached
    locked: str | None  # the lock reason ("" when locked without one), None when not locked


async def worktrees(root: Path) -> list[Worktree]:
    found: list[Worktree] = []
    for block in (await git(root, "worktree", "list", "--porcelain")).split("\n\n"):
        fields = dict(line.partition(" ")[::2] for line in block.splitlines())
        if "worktree" in fields:
            branch = fields.get("branch", "").removeprefix("refs/heads/") or None
            found.append(Worktree(Path(fields["worktree"]), branch, fields.get("locked")))
    return found


async def worktree_at(root: Path, path: Path) -> Worktree | None:
    return next((w for w in await worktrees(root) if w.path == path), None)


async def add_worktree(root: Path, path: Path, branch: str, base: str | None) -> None:
    """A worktree at `path` (which must not exist) on `branch`, made from `base` (default HEAD)
    when the branch is new. A new branch's worktree is registered directly (`_register`), since
    `git worktree add` reads every other worktree first and slows down as they accumulate (13 ms
    for the first, ~230 ms at 2,000); an existing branch goes through git, which refuses one
    checked out elsewhere."""
    if await branch_exists(root, branch):
        await _git_worktree_add(root, path, branch)
        return
    head = (await git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False)).strip()
    if base is None and not head:
        raise GitError("the repository has no commits yet: make a first commit, then create workstreams")
    start = await resolve_commit(root, base) if base else head
    common = common_dir(root)
    if any((common / name).exists() for name in COPIED_FROM_MAIN):
        await _git_worktree_add(root, path, "-b", branch, start)
        return
    await _unregister_missing(root, common / "worktrees", path)
    await git(root, "branch", branch, start)
    admin: Path | None = None
    try:
        admin = _register(common, path, branch)
        await git(path, "reset", "--hard", "--quiet", "--no-recurse-submodules")
    except (GitError, OSError) as exc:
        if admin is not None:
            shutil.rmtree(admin, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
        await git(root, "branch", "-D", branch, check=False)
        if isinstance(exc, GitError):
            raise
        raise GitError(f"cannot create the worktree {path}: {exc}") from exc
    (admin / "locked").unlink()
    # What `git worktree add` runs last; a failing hook fails it too, and the worktree stays.
    await git(path, "hook", "run", "--ignore-missing", "post-checkout", "--", NULL_OID, start, "1")


# What `git worktree add` copies from the main worktree into a new one (a sparse checkout, its
# per-worktree config): where either exists, git itself makes the worktree.
COPIED_FROM_MAIN = ("info/sparse-checkout", "config.worktree")
NULL_OID = "0" * 40


async def _git_worktree_add(root: Path, path: Path, *args: str) -> None:
    """`git worktree add [-b <new branch>] <path> <branch or commit>`."""
    if not path.exists() and await worktree_at(root, path) is not None:
        await git(root, "worktree", "prune")  # registered, but its folder is gone: forget it first
    *new_branch, checkout = args
    await git(root, "worktree", "add", *new_branch, "--", str(path), checkout)


def _register(common: Path, path: Path, branch: str) -> Path:
    """What `git worktree add` writes before its checkout (gitrepository-layout): `<path>/.git`
    naming an admin folder `<common>/worktrees/<id>` that holds `gitdir`, `commondir` and `HEAD`,
    and `locked` ("initializing") until the checkout is done, so that a `git worktree prune`
    meanwhile keeps it. The id is the folder's name, numbered like git's when taken. Returns the
    admin folder; `path` must not exist."""
    path.mkdir(parents=True)
    real = Path(os.path.realpath(path))
    (common / "worktrees").mkdir(exist_ok=True)
    for n in itertools.count():
        admin = common / "worktrees" / f"{real.name}{n or ''}"
        try:
            admin.mkdir()
            break
        except FileExistsError:
            continue
    (admin / "locked").write_text("initializing\n")
    (admin / "gitdir").write_text(f"{real / '.git'}\n")
    (admin / "commondir").write_text("../..\n")
    (admin / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    (path / ".git").write_text(f"gitdir: {os.path.realpath(admin)}\n")
    return admin


async def _unregister_missing(root: Path, admins: Path, path: Path) -> None:
    """Forget a registration of `path` whose folder is gone, as `git worktree add` requires. Only
    the ids git would have given `path` are read (not every worktree's), then `git worktree prune`."""
    dotgit = f"{os.path.realpath(path)}/.git"
    for n in itertools.count():
        admin = admins / f"{path.name}{n or ''}"
        if not admin.is_dir():
            return
        try:
            registered = (admin / "gitdir").read_text(errors="replace").strip()
        except OSError:  # not a registration git could use either
            continue
        if registered == dotgit:
            await git(root, "worktree", "prune")
            if admin.is_dir():
                raise GitError(f"{path} is a missing but locked worktree; 'git worktree unlock' it, then try again")
            return


async def current_branch(root: Path) -> str | None:
    """The branch checked out in the main worktree (None on a detached HEAD)."""
    out = await git(root, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return out.strip() or None


async def merge_base(root: Path, a: str, b: str) -> str | None:
    out = await git(root, "merge-base", "--end-of-options", a, b, check=False)
    return out.strip() or None


async def commit_all(worktree: Path, message: str) -> str | None:
    """Commit everything in the worktree but aidp's own folders; the new commit, or None when there
    was nothing to commit. Uses the user's git identity, or aidp's where none is configured."""
    await git(worktree, "add", "-A")
    # Ignored through info/exclude already; unstaged again in case a repository's rules let them in.
    await git(worktree, "rm", "-r", "--cached", "--quiet", "--ignore-unmatch", "--", STATE_DIR, WORKTREES_DIR)
    if not (await git(worktree, "diff", "--cached", "--name-only")).strip():
        return None
    identity: list[str] = []
    if not (await git(worktree, "var", "GIT_COMMITTER_IDENT", check=False)).strip():
        identity = ["-c", "user.name=aidp", "-c", "user.email=aidp@localhost"]
    await git(worktree, *identity, "commit", "--quiet", "--no-verify", "-m", message)
    return (await git(worktree, "rev-parse", "HEAD")).strip()


async def status_short(path: Path) -> str:
    return await git(path, "status", "--short")


async def ignored_files(path: Path) -> list[str]:
    """Ignored files and folders (`.env`, build output): git deletes them with the worktree."""
    out = await git(path, "status", "--short", "--ignored")
    return [line[3:] for line in out.splitlines() if line.startswith("!! ")]


async def initialised_submodules(path: Path) -> list[str]:
    """Submodules checked out in the worktree: their own git data goes with it."""
    out = await git(path, "ls-files", "--stage", "-z")
    entries = (entry.split("\t", 1) for entry in out.split("\0") if entry)
    return [name for meta, name in entries if meta.startswith("160000 ") and (path / name / ".git").exists()]


def listed(paths: list[str]) -> str:
    """Paths one per line, at most LISTED_MAX of them, then how many more."""
    more = [f"... and {len(paths) - LISTED_MAX} more"] if len(paths) > LISTED_MAX else []
    return "\n".join(paths[:LISTED_MAX] + more)


async def unmerged_commits(root: Path, branch: str, into: str) -> list[str]:
    """Commits on `branch` that `into` does not have: what deleting the branch would lose."""
    if not await branch_exists(root, branch):
        return []
    if not (await git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{into}^{{commit}}", check=False)):
        # `into` is gone (a deleted base branch): count what no other branch has, never nothing.
        other = ["--not", f"--exclude={branch}", "--branches"]
        return (await git(root, "log", "--oneline", branch, *other, "--")).splitlines()
    out = await git(root, "log", "--oneline", f"{into}..{branch}", "--", check=False)
    return out.splitlines()


async def remove_worktree(root: Path, path: Path, force: bool) -> None:
    """Remove the worktree; `force` also removes one that is dirty, locked or holds submodules."""
    if path.exists():
        await git(root, "worktree", "remove", *(["--force", "--force"] if force else []), "--", str(path))
    await git(root, "worktree", "prune")


async def delete_branch(root: Path, branch: str) -> None:
    if await branch_exists(root, branch):
        await git(root, "branch", "-D", "--", branch)
