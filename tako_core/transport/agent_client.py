"""The client side of the agent protocol: the agent's ops as typed calls, over an `AgentChannel`
(`agent_channel`: requests and replies matched by id over any line-oriented reader/writer pair). Of
the agent package it imports only the wire contract, the one module both ends share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tako_core.agent.contract import (
    MAX_LINE,
    PROTOCOL_VERSION,
    UPLOAD_CHUNK,
    AgentInfo,
    AppStatus,
    AutoTlsStatus,
    CertificateInfo,
    CertRemoved,
    Cleaned,
    Done,
    Event,
    ExecOutput,
    ExecResult,
    ExecStarted,
    Finalized,
    InstallOutput,
    InstanceStatus,
    Json,
    LeaseGranted,
    LeaseInfo,
    LogEntry,
    LogsEnd,
    Op,
    Progress,
    ReleaseCheck,
    ReleaseInfo,
    ReleaseRunInfo,
    ReleaseRuns,
    Releases,
    RunOutput,
    RunResult,
    RunStarted,
    Status,
    TlsAutoSet,
)
from tako_core.errors import AgentError
from tako_core.transport.agent_channel import (
    AgentChannel,
    AgentDisconnected,
    AgentReplyError,
    LeaseHeld,
    Reader,
    Writer,
)

__all__ = [
    "AgentClient",
    "AgentDisconnected",
    "AgentInfo",
    "AgentReplyError",
    "AppStatus",
    "AutoTlsStatus",
    "CertificateInfo",
    "InstanceStatus",
    "LeaseHeld",
    "LeaseInfo",
    "LogEntry",
    "ReleaseCheck",
    "ReleaseInfo",
    "ReleaseRunInfo",
    "RunResult",
    "TlsAutoSet",
]


HELLO_TIMEOUT = 15.0  # seconds; a socket that accepts but never answers is a hung agent
# Upload chunks in flight at once: 4 MiB, enough to fill a fast link with a long round trip, while
# the agent never holds more than this of one upload in memory.
UPLOAD_WINDOW = 8


E = TypeVar("E", bound=Event)


def _on(kind: type[E], handle: Callable[[E], None]) -> Callable[[Json], None]:
    """An event callback that reads each event as a `kind`."""
    return lambda message: handle(kind.from_wire(message))


async def _all_of(tasks: list[asyncio.Task[None]]) -> None:
    """Every task's end; the first failure cancels the rest."""
    try:
        await asyncio.gather(*tasks)
    finally:
        await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class AgentClient(AgentChannel):
    """The agent's ops as typed calls; `info` is what its hello said."""

    info: AgentInfo

    @classmethod
    async def connect(
        cls,
        reader: Reader,
        writer: Writer,
        behind_hello: Callable[[AgentClient], None] | None = None,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> AgentClient:
        """Say hello and check the agent speaks our protocol version. `behind_hello(client)` may start
        calls whose requests go out right behind the hello's, before its answer."""
        client = cls(reader, writer)
        client._read_task = asyncio.ensure_future(client._read_loop())
        hello = asyncio.ensure_future(client._call(Op.HELLO, {}, AgentInfo))
        if behind_hello is not None:
            behind_hello(client)  # tasks: they run, and write, after the hello's task
        try:
            client.info = await asyncio.wait_for(hello, hello_timeout)
        except TimeoutError:
            await client.close()
            raise AgentDisconnected(
                f"the agent did not answer hello within {hello_timeout:g} s", hint="restart the agent"
            ) from None
        except AgentReplyError as e:
            await client.close()
            raise AgentError(
                f"the agent does not speak protocol {PROTOCOL_VERSION}: {e.message}",
                hint="upgrade the agent (tako deploy installs the matching one)",
            ) from None
        except BaseException:
            await client.close()
            raise
        return client

    @classmethod
    async def open_unix(cls, path: Path) -> AgentClient:
        """Connect to a local agent socket."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2 * MAX_LINE)
        except OSError as e:
            raise AgentError(
                f"cannot reach the agent at {path}: {e.strerror}",
                hint="is the agent running? (tako servers setup)",
            ) from None
        return await cls.connect(reader, writer)

    # --- operations -----------------------------------------------------------------------------

    async def lease_acquire(
        self, app: str, env: str, holder: str, build: str, ttl: float = 30.0, *, force: bool = False
    ) -> LeaseInfo:
        params = {"app": app, "env": env, "holder": holder, "build": build, "ttl": ttl, "force": force}
        return (await self._call(Op.LEASE_ACQUIRE, params, LeaseGranted)).lease

    async def lease_renew(self, app: str, env: str, holder: str) -> None:
        await self._call(Op.LEASE_RENEW, {"app": app, "env": env, "holder": holder}, Done)

    async def lease_release(self, app: str, env: str, holder: str) -> None:
        await self._call(Op.LEASE_RELEASE, {"app": app, "env": env, "holder": holder}, Done)

    async def has_release(self, app: str, env: str, build: str) -> bool:
        return (await self.check_release(app, env, build)).complete

    async def check_release(
        self, app: str, env: str, build: str, files: list[str] | None = None
    ) -> ReleaseCheck:
        """Whether the release is complete; with `files` (sha256s or prefixes), which no kept release has."""
        params = {"app": app, "env": env, "build": build, "files": files or []}
        return await self._call(Op.HAS_RELEASE, params, ReleaseCheck)

    async def upload(
        self, name: str, path: Path, on_progress: Callable[[int, int], None]
    ) -> asyncio.Future[None]:
        """Send the local file `path` as ROOT/uploads/<name>: raw chunks pipelined, at most UPLOAD_WINDOW
        unanswered; on_progress(acknowledged bytes, total) after each. Returns once the last chunk is
        queued (a request sent after it reaches the agent after it, so an install need not wait for
        the acknowledgements); the future it returns ends with the last acknowledgement."""
        size = path.stat().st_size  # noqa: ASYNC240 (one stat)
        window = asyncio.Semaphore(UPLOAD_WINDOW)
        acked = 0

        async def send(offset: int, chunk: bytes) -> None:
            nonlocal acked
            params: Json = {"name": name, "offset": offset, "raw": len(chunk)}
            if offset + len(chunk) == size:
                params["size"] = size
            try:
                await self._call(Op.UPLOAD, params, Done, payload=chunk)
            finally:
                window.release()
            acked += len(chunk)
            on_progress(acked, size)

        sending: list[asyncio.Task[None]] = []
        try:
            with path.open("rb") as file:
                for offset in range(0, max(size, 1), UPLOAD_CHUNK):
                    await window.acquire()
                    if any(t.done() and t.exception() for t in sending):
                        break  # _all_of raises it
                    sending.append(asyncio.ensure_future(send(offset, file.read(UPLOAD_CHUNK))))
            # One pass of the loop: the last chunk's task writes, or queues on the (FIFO) write lock.
            await asyncio.sleep(0)
        except BaseException:
            await _cancel(sending)
            raise
        return asyncio.ensure_future(_all_of(sending))

    async def prepare(
        self,
        app: str,
        env: str,
        build: str,
        upload_path: str,
        *,
        install: str | None,
        install_inputs: Sequence[str] = (),
        env_vars: dict[str, str],
        secrets: dict[str, str],
        on_output: Callable[[str], None],
        base: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        """Unpack ROOT/uploads/<upload_path> into releases/<build> and run install there (its outputs
        reused from an earlier release with the same command and `install_inputs`, see agent/installs);
        with `base`, the upload is a delta and these files (path -> (sha256 or a prefix, mode)) come from kept
        releases."""
        await self._call(
            Op.PREPARE,
            {
                "app": app,
                "env": env,
                "build": build,
                "upload": upload_path,
                "base": base,
                "install": install,
                "install_inputs": list(install_inputs),
                "vars": env_vars,
                "secrets": secrets,
            },
            Done,
            _on(InstallOutput, lambda e: on_output(e.line)),
        )

    async def release_start(
        self,
        app: str,
        env: str,
        build: str,
        command: str,
        *,
        env_vars: dict[str, str],
        secrets: dict[str, str],
        timeout: float,  # noqa: ASYNC109 (the release command's limit, not this call's)
        run_id: str | None = None,
    ) -> str:
        """Start the release command as run `run_id` (contract.new_run_id; the agent picks one when
        None); returns the run's id."""
        params = {
            "run_id": run_id,
            "app": app,
            "env": env,
            "build": build,
            "command": command,
            "vars": env_vars,
            "secrets": secrets,
            "timeout": timeout,
        }
        return (await self._call(Op.RELEASE_START, params, RunStarted)).run_id

    async def release_watch(
        self, app: str, env: str, run_id: str, offset: int, on_line: Callable[[int, str], None]
    ) -> RunResult:
        """Lines from byte `offset` on as on_line(next_offset, line), then the result once it ended."""
        return await self._call(
            Op.RELEASE_WATCH,
            {"app": app, "env": env, "run_id": run_id, "offset": offset},
            RunResult,
            _on(RunOutput, lambda e: on_line(e.offset, e.line)),
        )

    async def release_runs(self, app: str, env: str) -> list[ReleaseRunInfo]:
        """The release command runs the server keeps, newest first."""
        return list((await self._call(Op.RELEASE_RUNS, {"app": app, "env": env}, ReleaseRuns)).runs)

    async def release_stop(self, app: str, env: str, run_id: str) -> None:
        await self._call(Op.RELEASE_STOP, {"app": app, "env": env, "run_id": run_id}, Done)

    async def cleanup(self, app: str, env: str, build: str) -> bool:
        """Remove a partial or failed release; True when removed. A release that `current` points at
        or that instances run is kept (False), never an error: abort paths call this blindly."""
        return (await self._call(Op.CLEANUP, {"app": app, "env": env, "build": build}, Cleaned)).removed

    async def rollout(
        self,
        app: str,
        env: str,
        build: str,
        *,
        start: str,
        instances: int,
        health_path: str,
        routes: tuple[str, ...] | list[str],
        env_vars: dict[str, str],
        secrets: dict[str, str],
        on_progress: Callable[[int, int], None],
        health_timeout: float = 30.0,
        finalize: bool = False,
        release_lease: str | None = None,
    ) -> None:
        """Start the build's instances, health-checked, one by one, and drain the old ones. With
        `finalize`, then what `finalize` does (keep 5) in the same exchange; an error after the rollout
        has `details["rolled_out"]`."""
        await self._call(
            Op.ROLLOUT,
            {
                "app": app,
                "env": env,
                "build": build,
                "start": start,
                "instances": instances,
                "health_path": health_path,
                "routes": list(routes),
                "vars": env_vars,
                "secrets": secrets,
                "health_timeout": health_timeout,
                "finalize": finalize,
                "release_lease": release_lease,
            },
            Finalized,
            _on(Progress, lambda e: on_progress(e.done, e.total)),
        )

    async def finalize(
        self, app: str, env: str, build: str, keep: int = 5, *, release_lease: str | None = None
    ) -> list[str]:
        """Point `current` at build and prune, then let go of `release_lease`'s lease if given;
        returns the builds pruned."""
        params = {"app": app, "env": env, "build": build, "keep": keep, "release_lease": release_lease}
        return list((await self._call(Op.FINALIZE, params, Finalized)).pruned)

    async def cert_install(self, app: str, env: str, chain: str, key: str) -> CertificateInfo:
        """Serve the env's routes over HTTPS with `chain` (PEM, leaf first) and its private `key`."""
        params = {"app": app, "env": env, "chain": chain, "key": key}
        return await self._call(Op.CERT_INSTALL, params, CertificateInfo)

    async def cert_remove(self, app: str, env: str) -> bool:
        return (await self._call(Op.CERT_REMOVE, {"app": app, "env": env}, CertRemoved)).removed

    async def tls_auto(self, app: str, env: str, settings: Json) -> TlsAutoSet:
        """Get the env's certificate automatically: `settings` are names, directory, email, ca_pem
        and, on a follower, leader (host, http_port, https_port, token, pin). A leader answers the
        token and pin its followers need."""
        return await self._call(Op.TLS_AUTO, {"app": app, "env": env, **settings}, TlsAutoSet)

    async def tls_renew(self, app: str, env: str) -> CertificateInfo:
        """A leader orders a new certificate now, a follower fetches the leader's now."""
        return await self._call(Op.TLS_RENEW, {"app": app, "env": env}, CertificateInfo)

    async def status(self) -> list[AppStatus]:
        return list((await self._call(Op.STATUS, {}, Status)).apps)

    async def releases(self, app: str, env: str) -> list[ReleaseInfo]:
        return list((await self._call(Op.RELEASES, {"app": app, "env": env}, Releases)).releases)

    async def rollback(
        self, app: str, env: str, build: str, on_progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Roll out a kept release again (no release command) and point `current` at it."""
        await self._call(
            Op.ROLLBACK,
            {"app": app, "env": env, "build": build},
            Done,
            _on(Progress, lambda e: on_progress(e.done, e.total)) if on_progress else None,
        )

    async def exec(
        self,
        app: str,
        env: str,
        command: str,
        *,
        size: tuple[int, int] | None,
        force: bool,
        on_started: Callable[[ExecStarted], None],
        on_output: Callable[[str], None],
    ) -> int:
        """Run `command` once as the instances run (their release, their env); its exit code. With a
        terminal `size` (rows, cols) it gets a PTY; send keys with exec_input. Cancel it to end it."""
        params = {"app": app, "env": env, "command": command, "force": force, "tty": size is not None}
        if size is not None:
            params.update(rows=size[0], cols=size[1])

        def on_event(message: Json) -> None:
            if message.get("event") == ExecStarted.NAME:
                on_started(ExecStarted.from_wire(message))
            else:
                on_output(ExecOutput.from_wire(message).data)

        return (await self._call(Op.EXEC, params, ExecResult, on_event)).exit_code

    async def exec_input(self, exec_id: str, data: bytes) -> None:
        text = data.decode(errors="surrogateescape")  # any bytes: the agent encodes them back
        await self._call(Op.EXEC_INPUT, {"exec_id": exec_id, "data": text}, Done)

    async def exec_resize(self, exec_id: str, rows: int, cols: int) -> None:
        await self._call(Op.EXEC_RESIZE, {"exec_id": exec_id, "rows": rows, "cols": cols}, Done)

    async def logs(
        self,
        app: str,
        env: str,
        on_entry: Callable[[LogEntry], None],
        *,
        lines: int = 100,
        since: float = 0.0,
        cursor: str | None = None,
        follow: bool = False,
    ) -> str:
        """Instance output: the newest `lines` lines stamped `since` or later, or all after `cursor`,
        each passed to on_entry; returns the cursor after the last. With `follow` it never returns:
        cancel it (or close the client) to stop."""
        params = {"app": app, "env": env, "lines": lines, "since": since, "cursor": cursor, "follow": follow}
        return (await self._call(Op.LOGS, params, LogsEnd, _on(LogEntry, on_entry))).cursor
