"""Workstreams on a Ray cluster (`[executor] kind = "ray"`): one actor per running attempt.

Each actor asks for one `slot_resource` (plus `[executor] resources`) and is never restarted nor
retried (`max_restarts=0`, `max_task_retries=0`): a harness never runs twice. While no node has a
free slot the workstream stays `queued`, saying so; past `placement_timeout_s` it ends `error`
naming what was missing. The branch goes there as a git bundle (through the object store, once per
run and branch head) and comes back as a bundle of the new commits, fetched fast-forward only; the
actor (`remote.RemoteRun`) streams output chunks and heartbeats, which aidp appends to the same log
file a local run writes. Cancel and timeout are enforced in the actor (SIGTERM, grace, SIGKILL of
the harness's tree), `ray.kill` is the backstop; a lost worker or a silent one (no heartbeat for
`heartbeat_timeout_s`) ends the attempt `failed`, "remote worker lost: <reason>".

Actors are owned by this aidp process (never detached): if aidp dies they die, their watchdogs end
the harnesses, and the next aidp records the runs interrupted as for local runs. With an empty
`address`, aidp starts a Ray instance of its own on 127.0.0.1, owned by this process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aidp.engine import gitrepo, setup
from aidp.engine.backend import Launch
from aidp.engine.config import Config, Executor
from aidp.engine.errors import ConfigError, GitError
from aidp.engine.harness import StartError
from aidp.engine.remote import Event, RemoteRun, Spec

try:
    import ray
    import ray.exceptions
except ImportError as exc:  # an optional extra
    raise ConfigError("[executor] kind = \"ray\" needs Ray, which is not installed: pip install 'aidp[ray]'") from exc

log = logging.getLogger(__name__)

SAY_WAITING_S = 2.0  # a placement that takes longer is said (queued, waiting for a slot); an actor takes ~1 s
KILL_MARGIN_S = 5.0  # after the grace period, the actor is killed if the harness is still not ended
LOCAL_SLOTS = 64  # a Ray instance aidp starts offers this many slots: the repository's bound decides
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024


@ray.remote
class Worker:
    """The actor of one attempt: runs `remote.RemoteRun` and ends it on request."""

    def __init__(self) -> None:
        self._run: RemoteRun | None = None

    async def host(self) -> str:
        return socket.gethostname()

    async def run(self, spec: Spec, bundle: bytes) -> AsyncIterator[Event]:
        self._run = RemoteRun(spec, bundle)
        async for event in self._run.events():
            yield event

    async def stop(self, grace_s: float) -> None:
        if self._run is not None:
            await self._run.stop(grace_s)


def _reason(exc: BaseException) -> str:
    """A Ray error's first line, without its traceback; for an exception raised in the actor,
    that exception (the first line names only the actor)."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__} in the actor: {_reason(cause)}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class RayAttempt:
    """A harness running in an actor; its events are pumped into the local log as they come."""

    tree = None

    def __init__(
        self,
        actor: Any,
        stream: Any,
        host: str,
        pid: int,
        log_fd: int,
        heartbeat_s: float,
        progress_path: Path | None,
        bring_back_to: tuple[Path, str, str, Path],
    ) -> None:
        """`bring_back_to`: the local worktree, its branch, the commit shipped, where a refused
        bundle is kept."""
        self._actor = actor
        self._stream = stream
        self.host: str | None = host
        self.child: tuple[int, int | None, Path | None] = (pid, None, None)  # remote: nothing here to end
        self.lost: str | None = None
        self._code: int | None = None
        self._notes: list[str] = []
        self._bundle: bytes | None = None
        self._log_fd = log_fd
        self._heartbeat_s = heartbeat_s
        self._progress_path = progress_path
        self._bring_back_to = bring_back_to
        self._pump = asyncio.ensure_future(self._read())

    @property
    def returncode(self) -> int | None:
        return self._code

    @property
    def gated(self) -> bool:
        return True  # its pid and node are known once the actor started it: recorded, then `go`

    def go(self) -> None:
        """Nothing here records it: the worker let it run as soon as its watchdog watched it."""

    @property
    def exited(self) -> asyncio.Future[None]:
        return self._pump

    async def stop(self, grace_s: float, hurry: asyncio.Event) -> None:
        if not self._pump.done():
            self._actor.stop.remote(grace_s)
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({self._pump, hurried}, timeout=grace_s + KILL_MARGIN_S, return_when="FIRST_COMPLETED")
            if hurry.is_set() and not self._pump.done():
                self._actor.stop.remote(0)
                await asyncio.wait({self._pump}, timeout=KILL_MARGIN_S)
            hurried.cancel()
        await self._end()

    async def kill(self) -> None:
        if not self._pump.done():
            self._actor.stop.remote(0)
            await asyncio.wait({self._pump}, timeout=KILL_MARGIN_S)
        await self._end()

    async def _end(self) -> None:
        """The backstop: the actor goes (its slot too), and with it anything still running there."""
        with contextlib.suppress(Exception):
            ray.kill(self._actor)
        if not self._pump.done():
            self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        with contextlib.suppress(OSError):
            os.close(self._log_fd)
        self._log_fd = -1

    async def _read(self) -> None:
        """Output into the log, progress into the progress file, until the end or a loss."""
        try:
            while True:
                event = await _next(self._stream, self._heartbeat_s)
                if event is None:
                    return
                self._take(event)
                if "end" in event:
                    return
        except TimeoutError:
            self.lost = f"no heartbeat for {self._heartbeat_s:g} s"
        except ray.exceptions.RayError as exc:
            self.lost = _reason(exc)

    def _take(self, event: Event) -> None:
        if isinstance(out := event.get("out"), bytes):
            os.write(self._log_fd, out)
        elif isinstance(progress := event.get("progress"), bytes) and self._progress_path is not None:
            with self._progress_path.open("ab") as f:
                f.write(progress)
        elif "end" in event:
            code, notes, bundle = event["end"], event.get("notes"), event.get("bundle")
            self._code = code if isinstance(code, int) else None
            self._notes = [str(n) for n in notes] if isinstance(notes, list) else []
            self._bundle = bundle if isinstance(bundle, bytes) else None

    async def bring_back(self) -> tuple[list[str], str | None]:
        """The new commits into `aidp/<slug>` and its worktree, fast-forward only. If the local
        branch moved meanwhile nothing is overwritten: the bundle is kept beside the log."""
        if self._bundle is None:
            return self._notes, None
        worktree, branch, base, keep = self._bring_back_to
        notes = list(self._notes)
        keep.write_bytes(self._bundle)
        try:
            now = (await gitrepo.git(worktree, "rev-parse", f"refs/heads/{branch}")).strip()
            if now != base:
                return notes, (
                    f"the local branch {branch} moved during the run ({base[:12]} -> {now[:12]}): the remote "
                    f"commits were not brought back (they are in {keep}; 'git fetch {keep} {branch}')"
                )
            await gitrepo.git(worktree, "fetch", "--quiet", str(keep), f"refs/heads/{branch}")
            await gitrepo.git(worktree, "merge", "--ff-only", "--quiet", "FETCH_HEAD")
        except GitError as exc:
            return notes, f"the remote commits could not be brought back (they are in {keep}): {exc}"
        head = (await gitrepo.git(worktree, "rev-parse", "HEAD")).strip()
        keep.unlink()
        return [*notes, f"brought back the remote commits: {branch} at {head[:12]}"], None


async def _next(stream: Any, timeout_s: float) -> Event | None:
    """The stream's next event (None at its end), or TimeoutError after `timeout_s` of silence."""
    try:
        ref = await asyncio.wait_for(stream.__anext__(), timeout_s)
    except StopAsyncIteration:
        return None
    event: Event = await ref
    return event


class RayBackend:
    """Attempts as Ray actors; connects (or starts a local Ray) at the first start."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._settings = Executor(kind="ray")
        self._config: Config | None = None
        self._connected: str | None = None  # the address connected to ("" for a local instance)
        self._connecting = asyncio.Lock()
        # slug -> ((run id, head), object ref): the latest bundle of each workstream's branch
        self._bundles: dict[str, tuple[tuple[str, str], Any]] = {}

    def configure(self, config: Config) -> None:
        """The settings for the next starts (read again for each run)."""
        if self._connected is not None and config.executor.address != self._connected:
            raise ConfigError(
                f"[executor] address changed to {config.executor.address!r} while aidp is connected to "
                f"{self._connected or 'its own Ray instance'}: restart aidp to use another cluster"
            )
        self._settings, self._config = config.executor, config

    async def close(self) -> None:
        self._bundles.clear()
        if self._connected is not None:
            await asyncio.to_thread(ray.shutdown)
            self._connected = None

    def recorded_before(self, run_id: str, slug: str, attempt: int) -> Path | None:
        return None  # the node is known only once an actor has it

    async def start(self, launch: Launch) -> RayAttempt:
        settings = self._settings
        await self._connect(launch)
        branch = launch.values["branch"]
        base = await self._head(launch.worktree, branch)
        bundle = await self._bundle(launch, branch, base)
        spec = await self._spec(launch, branch, base)
        resources = {settings.slot_resource: 1, **settings.resources}
        # Ray takes CPU and GPU only as their own keywords, every other resource by name.
        custom = {name: amount for name, amount in resources.items() if name not in ("CPU", "GPU")}
        actor = Worker.options(  # type: ignore[attr-defined]
            num_cpus=resources.get("CPU", 0),
            num_gpus=resources.get("GPU", 0),
            resources=custom,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=8,
        ).remote()
        try:
            host = await self._placed(actor, launch, resources)
            stream = actor.run.options(num_returns="streaming").remote(spec, bundle)
            log_fd = os.dup(launch.log_fd)
            try:
                pid = await self._started(stream, log_fd, settings.heartbeat_timeout_s)
            except BaseException:
                os.close(log_fd)
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            raise
        progress = Path(launch.env["AIDP_PROGRESS"]) if "AIDP_PROGRESS" in launch.env else None
        keep = launch.log_path.with_suffix(".bundle")
        return RayAttempt(
            actor,
            stream,
            host,
            pid,
            log_fd,
            settings.heartbeat_timeout_s,
            progress,
            (launch.worktree, branch, base, keep),
        )

    async def _connect(self, launch: Launch) -> None:
        """Join the configured cluster, or start a Ray instance of aidp's own on 127.0.0.1."""
        async with self._connecting:
            if self._connected is not None:
                return
            address = self._settings.address
            if not address and launch.waiting is not None:
                await launch.waiting("starting a local Ray instance")
            try:
                await asyncio.to_thread(self._init, address)
            except Exception as exc:
                where = address or "a local Ray instance on 127.0.0.1"
                raise StartError(f"cannot connect to the Ray cluster ({where}): {_reason(exc)}") from exc
            self._connected = address

    def _init(self, address: str) -> None:
        _keep_stdout_clean()
        common: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "include_dashboard": False}
        if address:
            ray.init(address=address, **common)
            return
        # Ray binds some of its ports on every interface even for a node on 127.0.0.1: aidp's own
        # instance never runs without Ray's token authentication (its default).
        if os.environ.get("RAY_AUTH_MODE", "token") != "token":
            raise ConfigError(
                f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} in aidp's environment: aidp starts no Ray instance "
                "without token authentication (unset it, or set [executor] address to a cluster of yours)"
            )
        ray.init(
            _node_ip_address="127.0.0.1",
            resources={self._settings.slot_resource: LOCAL_SLOTS},
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **common,
        )

    @staticmethod
    async def _head(worktree: Path, branch: str) -> str:
        try:
            return (await gitrepo.git(worktree, "rev-parse", f"refs/heads/{branch}")).strip()
        except GitError as exc:
            raise StartError(f"cannot read the branch to ship: {exc}") from exc

    async def _bundle(self, launch: Launch, branch: str, base: str) -> Any:
        """The branch as a git bundle in the object store, once per run and head (a retry of an
        attempt that committed nothing reuses it); a workstream's next one replaces it."""
        key = (launch.run_id, base)
        kept = self._bundles.get(launch.slug)
        if kept is None or kept[0] != key:
            with tempfile.TemporaryDirectory(prefix="aidp-bundle-") as folder:
                path = Path(folder) / "branch.bundle"
                try:
                    await gitrepo.git(launch.worktree, "bundle", "create", "--quiet", str(path), f"refs/heads/{branch}")
                except GitError as exc:
                    raise StartError(f"cannot bundle {branch} to ship it: {exc}") from exc
                self._bundles[launch.slug] = (key, await asyncio.to_thread(ray.put, path.read_bytes()))
        return self._bundles[launch.slug][1]

    async def _placed(self, actor: Any, launch: Launch, resources: dict[str, int]) -> str:
        """Wait until a node took the actor: `queued` while none has the resources free, `error`
        (a StartError naming them) past `placement_timeout_s`."""
        placed = asyncio.ensure_future(_await(actor.host.remote()))
        cancelled = asyncio.ensure_future(launch.cancel.wait() if launch.cancel else asyncio.Event().wait())
        timeout = self._settings.placement_timeout_s
        try:
            done, _ = await asyncio.wait(
                {placed, cancelled}, timeout=min(SAY_WAITING_S, timeout), return_when="FIRST_COMPLETED"
            )
            if not done and launch.waiting is not None:
                wanted = ", ".join(f"{name} {amount}" for name, amount in resources.items())
                await launch.waiting(f"waiting for a Ray node with a free slot ({wanted})")
            done, _ = await asyncio.wait(
                {placed, cancelled}, timeout=max(0.0, timeout - SAY_WAITING_S), return_when="FIRST_COMPLETED"
            )
        finally:
            cancelled.cancel()
        if cancelled in done:
            placed.cancel()
            raise StartError("cancelled while waiting for a Ray node")
        if not done:
            placed.cancel()
            offered = await asyncio.to_thread(ray.cluster_resources)
            missing = [f"{name} {amount}" for name, amount in resources.items() if offered.get(name, 0) < amount]
            what = ", ".join(missing) if missing else ", ".join(f"{n} {a}" for n, a in resources.items())
            raise StartError(
                f"no Ray node offered {what} within {timeout:g} s ([executor] placement_timeout_s); "
                + ("no node of the cluster has it at all" if missing else "every such slot stayed taken")
            )
        try:
            host: str = placed.result()
        except ray.exceptions.RayError as exc:
            raise StartError(f"the Ray actor could not start: {_reason(exc)}") from exc
        return host

    async def _started(self, stream: Any, log_fd: int, heartbeat_s: float) -> int:
        """Until the harness started (after a checkout and setup there): its remote pid; its
        output meanwhile goes into the log. A failure to start is a StartError, saying why."""
        try:
            while True:
                event = await _next(stream, heartbeat_s)
                if event is None:
                    raise StartError("the Ray actor ended before the harness started")
                if isinstance(out := event.get("out"), bytes):
                    os.write(log_fd, out)
                if isinstance(pid := event.get("started"), int):
                    return pid
                if "error" in event:
                    raise StartError(str(event["error"]))
        except TimeoutError as exc:
            raise StartError(
                f"remote worker lost before the harness started: no heartbeat for {heartbeat_s:g} s"
            ) from exc
        except ray.exceptions.RayError as exc:
            raise StartError(f"remote worker lost before the harness started: {_reason(exc)}") from exc

    async def _spec(self, launch: Launch, branch: str, base: str) -> Spec:
        worktree = self._config.worktree if self._config is not None else None
        try:
            copies = await asyncio.to_thread(_copies, self._root, worktree.copy if worktree else [])
        except OSError as exc:
            raise StartError(f"cannot read the [worktree] copy files to ship: {exc}") from exc
        return Spec(
            run_id=launch.run_id,
            slug=launch.slug,
            branch=branch,
            base=base,
            attempt=launch.attempt,
            command=list(launch.command),
            values={k: v for k, v in launch.values.items() if k not in ("worktree", "task_file")},
            env=dict(launch.extra_env),
            stdin_task=launch.stdin is not None,
            grace_s=launch.grace_s,
            commit=launch.commit,
            commit_message=launch.commit_message,
            copies=copies,
            setup=worktree.setup if worktree else None,
            setup_timeout_s=worktree.setup_timeout_s if worktree else 1800.0,
        )


def _keep_stdout_clean() -> None:
    """Ray's driver prints the cluster's error messages (a node died) on sys.stdout, which is the
    JSON-RPC channel of `aidp serve` and the JSON of `--json`: they go to aidp's log instead, and
    Ray's own chatter at start-up (token authentication, signal handlers) below warnings is muted."""

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        for line in data.get("lines", []):
            log.warning("ray (%s): %s", data.get("pid"), str(line).strip())

    ray._private.worker.print_to_stdstream = to_log
    logging.getLogger("ray").setLevel(logging.ERROR)


async def _await(ref: Any) -> Any:
    return await ref


def _copies(root: Path, patterns: list[str]) -> dict[str, bytes]:
    """`[worktree] copy`: the files the patterns match in the main checkout, as the local
    setup copies them (`setup.copy_files`), read to be shipped."""
    if not patterns:
        return {}
    with tempfile.TemporaryDirectory(prefix="aidp-copy-") as folder:
        staged = Path(folder)
        skip = [root / ".git", root / gitrepo.STATE_DIR, root / gitrepo.WORKTREES_DIR]
        copied = setup.copy_files(root, staged, patterns, skip)
        return {relative: (staged / relative).read_bytes() for relative in copied}
