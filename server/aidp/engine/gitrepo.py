"""The git operations aidp needs, run as argv lists (never a shell), asynchronously so a server's
event loop keeps serving while git works."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from aidp.engine.errors import GitError, NotARepository

WORKTREES_DIR = ".worktrees"
STATE_DIR = ".aidp"


async def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def find_root(start: Path) -> Path:
    """The main repository's root, also from inside one of its worktrees (so `aidp` works from any
    directory of the repository, including a workstream's own checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=start,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotARepository(f"cannot look for a git repository at {start}: {exc}") from exc
    if out.returncode != 0:
        raise NotARepository(f"not inside a git repository: {start} (run 'git init' first, or cd into one)")
    common = Path(out.stdout.strip())
    if common.name != ".git":
        raise NotARepository(f"{start} is in a bare repository; aidp needs a working tree")
    return common.parent


def ensure_ignored(root: Path) -> None:
    """Keep aidp's own folders out of the user's `git status` without touching tracked files."""
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    missing = [p for p in (f"/{WORKTREES_DIR}/", f"/{STATE_DIR}/") if p not in lines]
    if missing:
        with exclude.open("a") as f:
            if lines and lines[-1] != "":
                f.write("\n")
            f.write("# aidp\n" + "".join(p + "\n" for p in missing))


async def branch_exists(root: Path, branch: str) -> bool:
    return bool((await git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)).strip())


async def resolve_commit(root: Path, ref: str) -> str:
    if ref.startswith("-"):
        raise GitError(f"invalid base branch {ref!r}")
    out = await git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
    if not out.strip():
        raise GitError(f"base branch {ref!r} does not exist (see 'git branch')")
    return out.strip()


async def has_commits(root: Path) -> bool:
    return bool((await git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False)).strip())


async def add_worktree(root: Path, path: Path, branch: str, base: str | None) -> None:
    if await branch_exists(root, branch):
        await git(root, "worktree", "add", "--", str(path), branch)
        return
    if base is None and not await has_commits(root):
        raise GitError("the repository has no commits yet: make a first commit, then create workstreams")
    start = await resolve_commit(root, base) if base else "HEAD"
    await git(root, "worktree", "add", "-b", branch, "--", str(path), start)


async def status_short(path: Path) -> str:
    if not path.is_dir():
        return ""
    return await git(path, "status", "--short")


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
    if path.exists():
        await git(root, "worktree", "remove", *(["--force", "--force"] if force else []), "--", str(path))
    await git(root, "worktree", "prune")


async def delete_branch(root: Path, branch: str) -> None:
    if await branch_exists(root, branch):
        await git(root, "branch", "-D", "--", branch)
