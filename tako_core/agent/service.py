"""The agent's operations: what each op of the contract does, given typed parameters and an event sink.

Each op is an `Agent` method bound to its `Op` with `@handles`; the server looks the method up by op.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pkgutil
import platform
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

import tako_core
from tako_core.agent import delta, extract, releases, uploads
from tako_core.agent.autocerts import AutoCerts, params_from
from tako_core.agent.certs import Certs
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.contract import (
    BAD_REQUEST,
    FAILED,
    NOT_FOUND,
    PROTOCOL_VERSION,
    AgentInfo,
    AppStatus,
    CertificateInfo,
    CertRemoved,
    Cleaned,
    Done,
    Event,
    ExecOutput,
    ExecResult,
    Finalized,
    InstallOutput,
    InstanceStatus,
    LeaseGranted,
    LogEntry,
    LogsEnd,
    Message,
    Op,
    Progress,
    ProtocolError,
    ReleaseCheck,
    ReleaseInfo,
    ReleaseRuns,
    Releases,
    RunOutput,
    RunResult,
    RunStarted,
    Status,
    TlsAutoSet,
    clip,
)
from tako_core.agent.layout import Layout
from tako_core.agent.leader_link import SyncError
from tako_core.agent.leases import Leases
from tako_core.agent.oneoff import OneOffs
from tako_core.agent.params import Params
from tako_core.agent.procs import child_env
from tako_core.agent.rollout import AppRuntime, AppState
from tako_core.agent.router import Router
from tako_core.agent.runs import Runs, watch
from tako_core.mask import Masker

log = logging.getLogger("tako.agent")


class Emit(Protocol):
    """Sends events of the request being handled."""

    def __call__(self, message: Event) -> None: ...

    async def drain(self) -> None:
        """Wait until the client has taken what was sent (backpressure for long event streams)."""


Handler = Callable[[Params, Emit], Awaitable[Message]]
_Method = TypeVar("_Method", bound="Callable[[Agent, Params, Emit], Awaitable[Message]]")
_HANDLERS: dict[Op, Callable[[Agent, Params, Emit], Awaitable[Message]]] = {}


def handles(op: Op) -> Callable[[_Method], _Method]:
    """Binds the decorated Agent method to `op`."""

    def bind(method: _Method) -> _Method:
        _HANDLERS[op] = method
        return method

    return bind


MAX_RELEASE_TIMEOUT = 7 * 24 * 3600.0
KEEP_RUNS = 20  # release run logs kept per app/env
LOGS_BATCH = 256  # log lines sent between waits for the client
LOGS_POLL = 5.0  # a follower looks again this often even without a write (the file may have rotated)


def _build_id() -> str | None:
    """The zipapp's content hash (written into it by transport/agent_zipapp.py); None outside a zipapp."""
    try:
        data = pkgutil.get_data("tako_core.agent", "BUILD")
    except OSError:
        return None
    return data.decode() if data else None


def _progress(emit: Emit) -> Callable[[int, int], None]:
    return lambda done, total: emit(Progress(done=done, total=total))


class Agent:
    def __init__(self, layout: Layout, router: Router) -> None:
        self.layout = layout
        self.router = router
        self.leases = Leases(layout.leases_file)
        self.runs = Runs()
        self.oneoffs = OneOffs()
        self._apps: dict[tuple[str, str], AppRuntime] = {}
        self.certs = router.certs if router.certs is not None else Certs(layout.tls)
        self.autocerts = AutoCerts(layout.acme, self.certs, router)

    def handler(self, op: Op) -> Handler:
        return functools.partial(_HANDLERS[op], self)

    def runtime(self, p: Params) -> AppRuntime:
        app, env = p.name("app"), p.name("env")
        key = (app, env)
        if key not in self._apps:
            self._apps[key] = AppRuntime(app, env, self.layout.app(app, env), self.router)
        return self._apps[key]

    async def restore(self) -> None:
        """Bring back every app/env with a state.json, as it ran before the agent stopped."""
        for state_file in sorted(self.layout.apps.glob("*/*/state.json")):
            env_dir = state_file.parent
            p = Params({"app": env_dir.parent.name, "env": env_dir.name})
            try:
                runtime = self.runtime(p)
                async with runtime.exclusive("restore"):
                    await runtime.restore()
            except (ProtocolError, OSError) as e:
                log.error("cannot restore %s: %s", env_dir, e)

    async def shutdown(self, *, leave: bool = False) -> None:
        """Stop every app's instances; or, when the agent restarts (`leave`), leave them running
        for the next agent to adopt. Release commands and one-off runs are stopped either way."""
        await self.runs.shutdown()
        await self.autocerts.shutdown()
        ending = (r.leave() if leave else r.stop() for r in self._apps.values())
        await asyncio.gather(*ending, return_exceptions=True)

    @handles(Op.HELLO)
    async def hello(self, p: Params, emit: Emit) -> AgentInfo:
        return AgentInfo(
            agent_version=tako_core.__version__,
            protocol=PROTOCOL_VERSION,
            hostname=socket.gethostname(),
            python=platform.python_version(),
            free_bytes=shutil.disk_usage(self.layout.root).free,
            codecs=extract.codecs(),
            build_id=_build_id(),
            http_parser=self.router.backend,
        )

    @handles(Op.LEASE_ACQUIRE)
    async def lease_acquire(self, p: Params, emit: Emit) -> LeaseGranted:
        runtime = self.runtime(p)
        lease = self.leases.acquire(
            runtime.app,
            runtime.env,
            p.str("holder"),
            p.str("build")[:200],  # informational ("(building)" before the build id is known)
            p.num("ttl", 30.0, 1.0, 86400.0),
            p.bool("force"),
        )
        return LeaseGranted(lease=lease.info)

    @handles(Op.LEASE_RENEW)
    async def lease_renew(self, p: Params, emit: Emit) -> Done:
        self.leases.renew(p.name("app"), p.name("env"), p.str("holder"))
        return Done()

    @handles(Op.LEASE_RELEASE)
    async def lease_release(self, p: Params, emit: Emit) -> Done:
        self.leases.release(p.name("app"), p.name("env"), p.str("holder"))
        return Done()

    @handles(Op.HAS_RELEASE)
    async def has_release(self, p: Params, emit: Emit) -> ReleaseCheck:
        layout = self.runtime(p).layout
        complete = releases.is_complete(layout, p.name("build"))
        wanted, kept = p.strings("files"), releases.kept(layout)
        if complete or not wanted or not kept:
            return ReleaseCheck(complete=complete)
        return ReleaseCheck(complete=False, missing=await asyncio.to_thread(delta.missing, wanted, kept))

    @handles(Op.UPLOAD)
    async def upload(self, p: Params, emit: Emit) -> Done:
        # No await before the write: chunks land in the order sent (see agent/uploads.py).
        size = p.int("size", -1, -1, 1 << 50)  # the last chunk says the total
        offset = p.int("offset", 0, 0, 1 << 50)
        last = size if size >= 0 else None
        uploads.write_chunk(self.layout.uploads, p.str("name"), offset, p.raw(), last)
        return Done()

    def _env(self, runtime: AppRuntime, build: str, p: Params) -> tuple[dict[str, str], Masker]:
        secrets = p.mapping("secrets")
        env = child_env(
            env_vars=p.mapping("vars"),
            secrets=secrets,
            build=build,
            data_dir=runtime.layout.data,
            env=runtime.env,
        )
        return env, Masker(secrets.values())

    @handles(Op.PREPARE)
    async def prepare(self, p: Params, emit: Emit) -> Done:
        runtime, build = self.runtime(p), p.name("build")
        upload = releases.resolve_upload(self.layout.uploads, p.str("upload"))
        env, masker = self._env(runtime, build, p)
        async with runtime.exclusive("prepare"):
            await runtime.preparing(
                build,
                releases.prepare(
                    runtime.layout,
                    build,
                    upload,
                    p.opt_str("install"),
                    p.strings("install_inputs"),
                    env,
                    masker,
                    lambda line: emit(InstallOutput(line=clip(line))),
                    p.opt_mapping("base"),
                ),
            )
        return Done()

    @handles(Op.RELEASE_START)
    async def release_start(self, p: Params, emit: Emit) -> RunStarted:
        runtime, build = self.runtime(p), p.name("build")
        if not releases.is_complete(runtime.layout, build):
            raise ProtocolError(NOT_FOUND, f"release {build} is not prepared")
        env, masker = self._env(runtime, build, p)
        account = runtime.layout.create()
        run = self.runs.start(
            runtime.layout.runs,
            build=build,
            command=p.command("command"),
            cwd=runtime.layout.release(build),
            env=env,
            masker=masker,
            limit=p.num("timeout", 600.0, 0.1, MAX_RELEASE_TIMEOUT),
            run_id=p.opt_str("run_id"),  # no await before this: a watch sent right behind finds the run
            account=account,
        )
        log.info("%s: release run %s of %s started", runtime.key, run.run_id, build)
        return RunStarted(run_id=run.run_id)

    @handles(Op.RELEASE_WATCH)
    async def release_watch(self, p: Params, emit: Emit) -> RunResult:
        run = self.runs.find(self.runtime(p).layout.runs, p.str("run_id"))
        return await watch(
            run,
            p.int("offset", 0, 0, 1 << 62),
            lambda offset, line: emit(RunOutput(offset=offset, line=line)),
            emit.drain,
        )

    @handles(Op.RELEASE_RUNS)
    async def release_runs(self, p: Params, emit: Emit) -> ReleaseRuns:
        return ReleaseRuns(runs=tuple(self.runs.listing(self.runtime(p).layout.runs)))

    @handles(Op.RELEASE_STOP)
    async def release_stop(self, p: Params, emit: Emit) -> Done:
        run = self.runs.find(self.runtime(p).layout.runs, p.str("run_id"))
        run.stop()
        if run.task is not None:
            await asyncio.shield(run.task)
        return Done()

    @handles(Op.CLEANUP)
    async def cleanup(self, p: Params, emit: Emit) -> Cleaned:
        runtime, build = self.runtime(p), p.name("build")
        # An aborting client may still have this build's prepare running here: stop it, then queue.
        await runtime.stop_preparing(build)
        async with runtime.exclusive("cleanup", wait=True):
            if any(i.spec.build == build for i in runtime.instances):
                return Cleaned(removed=False, kept=f"{build} has running instances")
            if runtime.layout.current_build() == build:
                return Cleaned(removed=False, kept=f"{build} is the current release")
            removed = await asyncio.to_thread(releases.cleanup, runtime.layout, self.layout.uploads, build)
        return Cleaned(removed=removed)

    @handles(Op.ROLLOUT)
    async def rollout(self, p: Params, emit: Emit) -> Finalized:
        """With `finalize`, also what FINALIZE does (`keep`, `release_lease`) once the rollout is done:
        the deploy's last two steps in one exchange. A failure after the rollout says `rolled_out`."""
        runtime = self.runtime(p)
        health_path = p.opt_str("health_path") or "/"
        if not health_path.startswith("/") or any(c in health_path for c in " \r\n"):
            raise ProtocolError(BAD_REQUEST, f"health_path {health_path[:80]!r} must be a path like /health")
        state = AppState(
            build=p.name("build"),
            start=p.command("start"),
            instances=p.int("instances", 1, 1, 64),
            health_path=health_path,
            routes=p.hosts("routes"),
            vars=p.mapping("vars"),
            secrets=p.mapping("secrets"),
        )
        async with runtime.exclusive("rollout"):
            await runtime.rollout(state, _progress(emit), p.num("health_timeout", 30.0, 0.1, 3600.0))
            log.info("%s: rolled out %s (%d instance(s))", runtime.key, state.build, state.instances)
            if not p.bool("finalize"):
                return Finalized()
            try:
                return self._finalize(runtime, p)
            except (ProtocolError, OSError) as e:
                why = e.message if isinstance(e, ProtocolError) else str(e)
                message = f"rolled out, but finalizing failed: {why}"
                raise ProtocolError(FAILED, message, rolled_out=True) from e

    @handles(Op.FINALIZE)
    async def finalize(self, p: Params, emit: Emit) -> Finalized:
        runtime = self.runtime(p)
        async with runtime.exclusive("finalize"):
            return self._finalize(runtime, p)

    def _finalize(self, runtime: AppRuntime, p: Params) -> Finalized:
        removed = runtime.finalize(p.name("build"), p.int("keep", 5, 1, 1000))
        self.runs.prune(runtime.layout.runs, KEEP_RUNS)
        holder = p.opt_str("release_lease")  # the deploy's last step: saves the client a round trip
        if holder is not None:
            self.leases.release(runtime.app, runtime.env, holder)
        return Finalized(pruned=tuple(removed))

    @handles(Op.ROLLBACK)
    async def rollback(self, p: Params, emit: Emit) -> Done:
        runtime, build = self.runtime(p), p.name("build")
        async with runtime.exclusive("rollback"):
            await runtime.rollout(runtime.as_deployed(build), _progress(emit))
            runtime.finalize(build, keep=1 << 30)  # point `current` back; rollback never prunes
        return Done()

    @handles(Op.STATUS)
    async def status(self, p: Params, emit: Emit) -> Status:
        # Every app/env with files here, and those whose first deploy is under way (a lease only).
        deployed = {(d.parent.name, d.name) for d in self.layout.apps.glob("*/*") if d.is_dir()}
        apps = sorted(deployed | set(self.leases.held()))
        return Status(apps=tuple(self._status(self.runtime(Params({"app": a, "env": e}))) for a, e in apps))

    def _status(self, runtime: AppRuntime) -> AppStatus:
        state, lease = runtime.state, self.leases.get(runtime.app, runtime.env)
        return AppStatus(
            app=runtime.app,
            env=runtime.env,
            current=runtime.layout.current_build(),
            running=state.build if state and runtime.instances else None,
            routes=tuple(state.routes) if state else (),
            instances=tuple(
                InstanceStatus(
                    index=i.index,
                    build=i.spec.build,
                    port=i.port,
                    pid=i.pid,
                    running=i.running,
                    restarts=i.restarts,
                    inflight=self.router.inflight(i.upstream),
                    started_at=i.started_at,
                )
                for i in runtime.instances
            ),
            lease=lease.info if lease else None,
            user=runtime.layout.user_name(),
            shares_agent_user=not runtime.layout.app_users,
            certificate=self.certs.get(runtime.key),
            auto_tls=self.autocerts.status(runtime.key),
        )

    @handles(Op.CERT_INSTALL)
    async def cert_install(self, p: Params, emit: Emit) -> CertificateInfo:
        """Serve the app/env's routes over HTTPS with this chain and key (the key never leaves the
        agent's 0600 files: no log line, event or error carries it)."""
        runtime = self.runtime(p)
        await self.autocerts.stop(runtime.key)
        return await asyncio.to_thread(self.certs.install, runtime.key, p.str("chain"), p.str("key"))

    @handles(Op.CERT_REMOVE)
    async def cert_remove(self, p: Params, emit: Emit) -> CertRemoved:
        key = self.runtime(p).key
        await self.autocerts.stop(key)
        return CertRemoved(removed=self.certs.remove(key))

    @handles(Op.TLS_AUTO)
    async def tls_auto(self, p: Params, emit: Emit) -> TlsAutoSet:
        """Get and renew the env's certificate automatically (see agent/autocerts.py)."""
        return await self.autocerts.configure(self.runtime(p).key, params_from(p), hold=p.bool("hold"))

    @handles(Op.TLS_RENEW)
    async def tls_renew(self, p: Params, emit: Emit) -> CertificateInfo:
        key = self.runtime(p).key
        try:
            return await self.autocerts.renew(key)
        except KeyError:
            raise ProtocolError(
                NOT_FOUND, f"{key} gets no automatic certificate here", hint='deploy it with tls = "auto"'
            ) from None
        except SyncError as err:
            raise ProtocolError(FAILED, str(err), hint="the agent keeps retrying on its own") from None

    @handles(Op.RELEASES)
    async def releases(self, p: Params, emit: Emit) -> Releases:
        layout = self.runtime(p).layout
        current = layout.current_build()
        return Releases(
            releases=tuple(
                ReleaseInfo(
                    build=b,
                    complete=releases.is_complete(layout, b),
                    current=b == current,
                    created_at=releases.created_at(layout, b),
                )
                for b in releases.builds(layout)
            )
        )

    @handles(Op.EXEC)
    async def exec(self, p: Params, emit: Emit) -> ExecResult:
        rows, cols = p.int("rows", 0, 0, 1000), p.int("cols", 0, 0, 1000)
        return await self.oneoffs.run(
            self.runtime(p),
            self.leases,
            p.command("command"),
            size=(rows, cols) if p.bool("tty") else None,
            force=p.bool("force"),
            started=emit,
            output=lambda data: emit(ExecOutput(data=data)),
            drain=emit.drain,
        )

    @handles(Op.EXEC_INPUT)
    async def exec_input(self, p: Params, emit: Emit) -> Done:
        self.oneoffs.find(p.str("exec_id")).write(p.str("data").encode(errors="surrogateescape"))
        return Done()

    @handles(Op.EXEC_RESIZE)
    async def exec_resize(self, p: Params, emit: Emit) -> Done:
        self.oneoffs.find(p.str("exec_id")).resize(p.int("rows", 24, 1, 1000), p.int("cols", 80, 1, 1000))
        return Done()

    @handles(Op.LOGS)
    async def logs(self, p: Params, emit: Emit) -> LogsEnd:
        """The newest `lines` lines (stamped `since` or later), or every line after `cursor`; with
        `follow`, then every line as it is written, until the client goes away."""
        output = self.runtime(p).output
        cursor = p.opt_str("cursor")
        if cursor is None:
            backlog = output.tail(p.int("lines", 100, 0, 100_000), p.num("since", 0.0, 0.0, 1e12))
            cursor = backlog[-1].cursor if backlog else output.end()
            await _send(backlog, emit)
        follow = p.bool("follow")
        while True:
            wakeup = output.wakeup
            sent = await _send(output.after(cursor), emit)
            cursor = sent or cursor
            if not follow:
                return LogsEnd(cursor=cursor)
            if not sent:  # nothing new: sleep until the next write (or look again, for a rotation)
                with contextlib.suppress(WaitTimeout):
                    await asyncio.wait_for(wakeup.wait(), LOGS_POLL)


async def _send(entries: Iterable[LogEntry], emit: Emit) -> str | None:
    """Emit `entries`, waiting for the client between batches; the cursor after the last one sent."""
    cursor = None
    for count, entry in enumerate(entries, 1):
        emit(entry)
        cursor = entry.cursor
        if count % LOGS_BATCH == 0:
            await emit.drain()
    await emit.drain()
    return cursor
