"""The client side of the agent protocol: typed calls over any line-oriented reader/writer pair.

Works over asyncio streams (a local socket) and asyncssh's `open_unix_connection` alike. Many calls
may run at once on one connection; replies are matched to calls by request id. Of the agent package it
imports only the wire contract, the one module both ends share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tako_core.agent.contract import (
    LEASE_HELD,
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
    Message,
    Op,
    Progress,
    ProtocolError,
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
    decode,
    encode,
    request,
)
from tako_core.errors import AgentError, TransportError

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


class Reader(Protocol):
    async def readline(self) -> bytes | str: ...


class Writer(Protocol):
    def write(self, data: bytes) -> Any: ...
    async def drain(self) -> None: ...
    def close(self) -> Any: ...


class AgentReplyError(AgentError):
    """The agent answered a request with an error; `code` is one of the contract's error codes."""

    def __init__(self, code: str, message: str, *, hint: str | None, details: dict[str, Any]) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.details = details


class LeaseHeld(AgentReplyError):
    """Someone else is deploying this app/env: `holder`, `build` and `started_at` (epoch seconds)."""

    @property
    def holder(self) -> str:
        return str(self.details.get("holder", "?"))

    @property
    def build(self) -> str:
        return str(self.details.get("build", "?"))

    @property
    def started_at(self) -> float:
        return float(self.details.get("started_at", 0.0))


class AgentDisconnected(AgentError, TransportError):
    """The connection to the agent ended before the reply came. Also a TransportError: the cure is
    the same as for a dropped SSH connection (reconnect, then e.g. re-attach a release watch)."""


M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)


def _on(kind: type[E], handle: Callable[[E], None]) -> Callable[[Json], None]:
    """An event callback that reads each event as a `kind`."""
    return lambda message: handle(kind.from_wire(message))


def _refusal(reply: Json) -> AgentReplyError:
    error = reply.get("error") or {}
    kind = LeaseHeld if error.get("code") == LEASE_HELD else AgentReplyError
    return kind(
        str(error.get("code", "")),
        str(error.get("message", "the agent refused the request")),
        hint=error.get("hint"),
        details=dict(error.get("details") or {}),
    )


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


_Pending = tuple["asyncio.Future[Json]", Callable[[Json], None] | None]


class AgentClient:
    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._write_lock = asyncio.Lock()
        self._read_task: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self.info: AgentInfo

    @classmethod
    async def connect(cls, reader: Reader, writer: Writer) -> AgentClient:
        """Say hello and check the agent speaks our protocol version."""
        client = cls(reader, writer)
        client._read_task = asyncio.ensure_future(client._read_loop())
        try:
            client.info = await asyncio.wait_for(client._call(Op.HELLO, {}, AgentInfo), HELLO_TIMEOUT)
        except TimeoutError:
            await client.close()
            raise AgentDisconnected(
                f"the agent did not answer hello within {HELLO_TIMEOUT:g} s", hint="restart the agent"
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

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
        self._fail_pending("the connection was closed")

    # --- plumbing -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the agent closed the connection"
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                line = raw.encode() if isinstance(raw, str) else raw
                try:
                    message = decode(line)
                except ProtocolError:
                    continue  # nothing to match it to; the agent never sends these
                pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                if pending is None:
                    continue
                future, on_event = pending
                if "event" in message:
                    if on_event is not None and not future.done():
                        try:
                            on_event(message)
                        except Exception as e:  # the caller's callback failed: that call fails
                            future.set_exception(e)
                elif not future.done():
                    future.set_result(message)
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
            reason = f"the connection to the agent broke: {type(e).__name__}"
        finally:
            self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        self._closed_reason = self._closed_reason or reason
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(AgentDisconnected(reason, hint="reconnect and retry"))

    async def _call(
        self,
        op: Op,
        params: Json,
        reply: type[M],
        on_event: Callable[[Json], None] | None = None,
        *,
        payload: bytes = b"",
    ) -> M:
        """Send one request (its line, then `payload`); its result read as a `reply`, its events
        passed to `on_event`."""
        if self._closed_reason is not None:
            raise AgentDisconnected(self._closed_reason, hint="reconnect and retry")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_event)
        try:
            async with self._write_lock:
                try:
                    self._writer.write(encode(request(request_id, op, params)) + payload)
                    await self._writer.drain()
                except (OSError, EOFError) as e:
                    raise AgentDisconnected(f"cannot send to the agent: {e}", hint="reconnect") from None
            answer = await future
            if answer.get("ok") is not True:
                raise _refusal(answer)
            return reply.from_wire(answer)
        except ProtocolError as e:  # from reading the result or an event
            raise AgentError(
                f"the agent's answer to {op.value} is unreadable: {e.message}",
                hint="upgrade tako or the agent so both speak the same protocol",
            ) from None
        finally:
            self._pending.pop(request_id, None)

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
        """Whether the release is complete; with `files` (sha256s), which of them no kept release holds."""
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
        with `base`, the upload is a delta and these files (path -> (sha256, mode)) come from kept
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
    ) -> None:
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
            },
            Done,
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
