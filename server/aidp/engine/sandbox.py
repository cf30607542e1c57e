"""`[sandbox] kind = "bwrap"`: a harness writes its own worktree and nothing else.

Agents run with their permission prompts off, so one confused agent could otherwise write the
main checkout, the other worktrees or `~/.ssh`. Under bubblewrap the harness sees the whole
filesystem read-only except:

- its worktree (its work);
- the repository's object store (`git rev-parse --git-path objects`): a commit writes its objects
  there, and objects are content-addressed, so writing more of them changes no one's branch;
- the worktree's admin directory (`.git/worktrees/<slug>`): its index, its `HEAD` and that
  HEAD's reflog, its per-worktree refs (`ORIG_HEAD`, bisect);
- a private `/tmp` and a private `/dev` (devices, `/dev/shm`);
- the `[sandbox] writable` paths (agents keep credentials and caches in the home directory).

Nothing else of the git directory: `refs/`, `packed-refs`, `config`, the other worktrees' admin
directories stay read-only, so an agent can move no branch, its own included. What that costs:
`git fetch`, `git config`, a branch made inside are refused; `git gc --auto` cannot write its
`gc.log` (it only complains).

Refs: branch refs live in the shared git directory, so a writable `refs/heads/aidp/` (a file alone
cannot be bound: git writes `<ref>.lock` beside it and renames, and `packed-refs` is one file for
all) would let an agent move every workstream's branch. Chosen instead: the worktree runs on a
detached HEAD, which lives in its own admin directory. Before the run aidp detaches it at the tip of
`aidp/<slug>` (`git update-ref --no-deref`: the files are not touched); afterwards it moves the
branch to the worktree's HEAD, fast-forward only and by compare-and-swap, re-attaches HEAD and
records an event. A HEAD that does not descend from the branch (a reset, a rebase), or a branch
moved meanwhile, is refused and said in the result: the worktree stays detached there, nothing is
overwritten. Measured (bench: sandbox, 2 busy cores): the detach and the fast-forward are 4 `git`
processes (6 when the branch moves), 25 ms per run, next to 15 ms for bubblewrap's own start; a
per-run `git clone --shared` (its own refs, fetched back afterwards) costs 140 ms for a 200-file
repository before the fetch and grows with the checkout, and changes the paths an agent sees; an
overlay over `refs/` needs bubblewrap 0.8's overlays and kernel support, and the same move afterwards.

Processes: `--unshare-pid` makes the harness's tree a PID namespace whose init is bubblewrap's
own; when the harness exits (or is killed) that init exits and the kernel kills everything left in
the namespace, however it detached (`setsid`, double fork, `env -i`). `--die-with-parent` ends it
all with aidp. Signals keep their meaning: the outer bubblewrap ignores SIGTERM (`env
--ignore-signal`, inherited across its exec) and the harness gets the default back (`env
--default-signal`), so cancel and timeout still TERM the harness, wait the grace period, then KILL
the group or cgroup, which ends bubblewrap and with it the namespace. Without that the TERM would
end the outer bubblewrap, and its death would SIGKILL the harness at once, with no grace. No
`--new-session`: it would put the harness out of the process group aidp signals, and the harness
has no controlling terminal to abuse anyway (aidp starts it in its own session, stdin /dev/null).
A harness killed by a signal exits 128 + its number, as bubblewrap reports it (as a shell does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from aidp.engine import toolrun
from aidp.engine.config import Sandbox
from aidp.engine.errors import GitError
from aidp.engine.gitrepo import git
from aidp.engine.harness import StartError
from aidp.engine.model import Status, WorkstreamResult

TMP = Path("/tmp")
log = logging.getLogger(__name__)
_probed: dict[str, str | None] = {}  # bwrap path -> why it cannot sandbox (None: it can)


@dataclass(frozen=True)
class GitDirs:
    """Where git keeps what a commit in the worktree writes, and the directory holding it all."""

    common: Path  # the repository's git directory
    objects: Path
    admin: Path  # the worktree's own: .git/worktrees/<slug>


@dataclass(frozen=True)
class Box:
    """A prepared sandbox: the argv prefix, what the result says, and the branch to move after."""

    prefix: list[str]
    description: str
    worktree: Path
    branch: str


def describe(config: Sandbox) -> str:
    """What `WorkstreamResult.sandbox` says: the kind, and what differs from the defaults."""
    return ", ".join(
        [config.kind]
        + (["no network"] if not config.network else [])
        + (["others hidden"] if config.hide_others else [])
    )


def bwrap_argv(
    config: Sandbox,
    worktree: Path,
    root: Path,
    dirs: GitDirs,
    bwrap: str = "bwrap",
    env: str = "env",
    run_files: Sequence[Path] = (),
) -> list[str]:
    """The argv prefix that runs a harness sandboxed (pure: the paths are given).

    Later mounts sit on top of earlier ones, so the order is the policy: everything read-only, then
    the writable list, then the repository read-only (or hidden) again, whatever that list holds,
    then what this worktree's commits need and the run's own files (its progress channel)."""
    argv = [env, "--ignore-signal=TERM", bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--tmpfs", str(TMP)]
    for extra in config.writable:
        argv += ["--bind", extra, extra]
    argv += ["--tmpfs", str(root)] if config.hide_others else ["--ro-bind", str(root), str(root)]
    if config.hide_others or not dirs.common.is_relative_to(root):
        argv += ["--ro-bind", str(dirs.common), str(dirs.common)]
    for path in (str(dirs.objects), str(dirs.admin), str(worktree), *map(str, run_files)):
        argv += ["--bind", path, path]
    if not config.network:
        argv.append("--unshare-net")
    argv += ["--unshare-pid", "--die-with-parent", "--chdir", str(worktree), "--", env, "--default-signal=TERM"]
    return argv


async def prepare(
    config: Sandbox,
    worktree: Path,
    branch: str,
    env: Mapping[str, str],
    root: Path,
    run_files: Sequence[Path] = (),
) -> Box | None:
    """Check that the configured sandbox can start and detach the worktree's HEAD; None when no
    sandbox is configured. A sandbox that cannot start is a `StartError` naming what is missing,
    never a run without it. `root`: the repository; `run_files`: files of this run the harness
    writes (they exist already), however read-only the rest is."""
    if config.kind == "none":
        return None
    search = env.get("PATH", os.defpath)
    bwrap, env_program = shutil.which("bwrap", path=search), shutil.which("env", path=search)
    if bwrap is None:
        raise StartError(
            '[sandbox] kind = "bwrap" but bwrap is not on PATH: install bubblewrap (apt-get install bubblewrap), '
            'or set [sandbox] kind = "none" to run unsandboxed'
        )
    if env_program is None:
        raise StartError('[sandbox] kind = "bwrap" needs env (GNU coreutils) on PATH, and it is not there')
    if why := await _probe(bwrap):
        raise StartError(f'[sandbox] kind = "bwrap": bwrap cannot create a sandbox here: {why}')
    if missing := [path for path in config.writable if not os.path.exists(path)]:
        raise StartError(
            f"[sandbox] writable: {', '.join(missing)} does not exist (create it, or remove it from the list)"
        )
    try:
        dirs, head = await _inspect(worktree)
        await _detach(worktree, branch, head)
    except GitError as exc:
        raise StartError(f"cannot prepare the sandbox: {exc}") from exc
    argv = bwrap_argv(config, worktree, root, dirs, bwrap, env_program, run_files)
    return Box(prefix=argv, description=describe(config), worktree=worktree, branch=branch)


async def leave(box: Box, result: WorkstreamResult) -> tuple[WorkstreamResult, str | None]:
    """After the harness ended: move the branch to the worktree's HEAD (fast-forward only) and
    re-attach HEAD. Returns the result, saying it ran sandboxed, and the event to record when the
    branch moved. A refusal is said in the result (a completed run becomes failed: its work is not
    on its branch); the worktree then stays detached at its HEAD and nothing is overwritten."""
    if result.exit_code is not None:  # it ran (a harness that could not start has no exit code)
        result = msgspec.structs.replace(result, sandbox=box.description)
    try:
        moved = await _attach(box.worktree, box.branch)
    except GitError as exc:
        refused = f"{box.branch} was not moved to the sandboxed run's commits: {exc}"
        status = Status.FAILED if result.status == Status.COMPLETED else result.status
        error = f"{result.error}; {refused}" if result.error else refused
        return msgspec.structs.replace(result, status=status, error=error), None
    return result, moved


async def reattach(worktree: Path, branch: str) -> str | None:
    """For a run whose aidp process died (the sandbox died with it): what `leave` would have done,
    when the worktree is still detached and its branch can be fast-forwarded to it; the event to
    record, or None. Otherwise nothing changes, and the next sandboxed run says why it cannot start."""
    try:
        if not worktree.is_dir() or (await _inspect(worktree))[1] != "HEAD":
            return None
        return await _attach(worktree, branch) or f"{branch} attached again"
    except GitError as exc:
        log.warning("%s: left detached after an interrupted sandboxed run: %s", worktree, exc)
        return None


async def _probe(bwrap: str) -> str | None:
    """Whether this bwrap can make a sandbox at all (user namespaces may be off), once per process."""
    if bwrap not in _probed:
        proc = await asyncio.create_subprocess_exec(
            bwrap,
            *("--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "--", "true"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate()
        _probed[bwrap] = None if proc.returncode == 0 else err.decode(errors="replace").strip() or "no message"
    return _probed[bwrap]


async def _inspect(worktree: Path) -> tuple[GitDirs, str]:
    """The git directories a commit writes, and what HEAD is on (`HEAD` when detached): one git."""
    asked = ("--git-common-dir", "--git-path", "objects", "--git-dir", "--symbolic-full-name", "HEAD")
    common, objects, admin, head = (await git(worktree, "rev-parse", "--path-format=absolute", *asked)).splitlines()
    return GitDirs(common=Path(common), objects=Path(objects), admin=Path(admin)), head


async def _detach(worktree: Path, branch: str, head: str) -> None:
    """Detach HEAD at the branch's tip (the files are not touched). A HEAD already detached (a run
    whose end aidp did not see) is kept when the branch can still be fast-forwarded to it; the end
    of this run does that."""
    ref = f"refs/heads/{branch}"
    if head == ref:
        await git(worktree, "update-ref", "--no-deref", "-m", "aidp: sandboxed run", "HEAD", ref)
    elif head != "HEAD":
        raise GitError(f"the worktree is on {head}, not {ref}; switch it back to run it sandboxed")
    elif not await _is_ancestor(worktree, ref):
        raise GitError(
            f"the worktree's HEAD is detached and does not descend from {branch}; "
            f"attach it (git switch {branch}, or git branch -f {branch} HEAD) to run it sandboxed"
        )


async def _is_ancestor(worktree: Path, ref: str) -> bool:
    """Whether HEAD descends from `ref` (its exit status is the answer, so not through `git`)."""
    code, _, _ = await toolrun.run(["git", "merge-base", "--is-ancestor", ref, "HEAD"], worktree)
    return code == 0


async def _attach(worktree: Path, branch: str) -> str | None:
    """Fast-forward `branch` to HEAD by compare-and-swap, then point HEAD at it again; the event
    to record when it moved. GitError when it cannot be done without overwriting anything."""
    ref = f"refs/heads/{branch}"
    head, tip, attached = (await git(worktree, "rev-parse", "HEAD", ref, "--symbolic-full-name", "HEAD")).split()
    if attached not in ("HEAD", ref):
        raise GitError(f"the harness left its worktree on {attached}")
    moved = None
    if head != tip:
        if not await _is_ancestor(worktree, ref):
            raise GitError(
                f"its HEAD {head[:12]} does not descend from {tip[:12]}; the worktree stays detached at "
                f"{head[:12]} (git switch {branch} drops those commits, git branch -f {branch} HEAD keeps them)"
            )
        await git(worktree, "update-ref", "-m", "aidp: sandboxed run", ref, head, tip)
        moved = f"sandboxed run: moved {branch} to {head[:12]} (fast-forward from {tip[:12]})"
    await git(worktree, "symbolic-ref", "-m", "aidp: sandboxed run ended", "HEAD", ref)
    return moved
