"""Running a real agent process for tests, packing sample releases, and a bounded HTTP load loop."""

from __future__ import annotations

import asyncio
import io
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from tako_core.transport.agent_client import AgentClient
from tako_core.transport.agent_zipapp import BUILD_FILE, build_zipapp

SAMPLE_APP = Path(__file__).with_name("sample_app.py")
# A Python 3.10 runs the zipapp where one is installed: it proves the agent needs nothing but the
# stdlib and what the zipapp bundles, on the oldest Python it supports.
PY310 = Path("/root/.pyenv/versions/3.10.13/bin/python3")
START = "exec python3 sample_app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class AgentProcess:
    root: Path
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "run" / "tako.sock"

    async def client(self) -> AgentClient:
        return await AgentClient.open_unix(self.socket)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def agent_command(root: Path, http_port: int, pyz_dir: Path, zipapp: Path | None = None) -> list[str]:
    """Runs `zipapp` if given, else this tree's agent: its zipapp on PY310 where there is one."""
    args = ["serve", "--root", str(root), "--http-host", "127.0.0.1", "--http-port", str(http_port)]
    args += ["--https-port", "0"]  # none, unless `extra` names one (the last one given counts)
    if zipapp is None and not PY310.exists():
        return [sys.executable, "-m", "tako_core.agent", *args]
    python = PY310 if PY310.exists() else Path(sys.executable)
    return [str(python), str(zipapp or build_zipapp(pyz_dir)), *args]


def start_agent(
    root: Path,
    pyz_dir: Path,
    http_port: int | None = None,
    zipapp: Path | None = None,
    *,
    extra: Sequence[str] = (),
    max_fds: int | None = None,
) -> AgentProcess:
    """`extra`: more `serve` arguments; `max_fds`: the agent's RLIMIT_NOFILE, soft and hard."""
    port = http_port or free_port()
    # Apps as the agent's own user: per-app users are the fleet's to test (tests/test_app_users.py).
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "LANG": "C.UTF-8", "TAKO_APP_USERS": "0"}

    def limit() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    command = [*agent_command(root, port, pyz_dir, zipapp), *extra]
    proc = subprocess.Popen(command, env=env, cwd="/", preexec_fn=limit)
    agent = AgentProcess(root, port, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        if agent.socket.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(agent.socket))
                    return agent
                except OSError:
                    pass
        time.sleep(0.05)
    agent.stop()
    raise RuntimeError("agent did not start")


def pack(dest: Path, version: str, mode: str = "ok", extra: dict[str, str] | None = None) -> Path:
    """A tar.zst release of the sample app answering `version`."""
    files = {"sample_app.py": SAMPLE_APP.read_text(), "version.txt": version + "\n", "mode.txt": mode}
    files.update(extra or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return dest


@dataclass
class Sample:
    sent: float
    answered: float
    body: str | None  # None: the request failed
    connection: int


@dataclass
class Load:
    """Keep-alive GET loops through the router, bounded in requests and time."""

    port: int
    host: str
    address: str = "127.0.0.1"  # where the router listens (the fleet's servers use 127.0.0.x)
    connections: int = 4
    max_requests: int = 20000
    max_seconds: float = 60.0
    tls: ssl.SSLContext | None = None  # HTTPS: SNI is `host`
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._loop(n)) for n in range(self.connections)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.body is None]

    async def _loop(self, connection: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        writer = None
        while (
            not self._stop.is_set() and time.monotonic() < deadline and len(self.samples) < self.max_requests
        ):
            sent = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        self.address, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
                    )
                writer.write(f"GET / HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
                body, keep = await asyncio.wait_for(read_keep_alive(reader), 10)
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                body = None
                if writer is not None:
                    writer.close()
                writer = None
            self.samples.append(Sample(sent, time.monotonic(), body, connection))
        if writer is not None:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> str:
    """The body of one keep-alive HTTP/1.1 200 response (content-length framed); ValueError otherwise."""
    return (await read_keep_alive(reader))[0]


async def read_keep_alive(reader: asyncio.StreamReader) -> tuple[str, bool]:
    """Like `read_response`, and whether the connection stays open (no `Connection: close`): a
    client must not send another request on a connection whose response said close."""
    status = await reader.readuntil(b"\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"status {status!r}")
    length, keep = 0, True
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            keep = False
    return (await reader.readexactly(length)).decode().strip(), keep


async def get(port: int, host: str) -> tuple[int, str]:
    """One request on a fresh connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode().strip()


def other_build(cache: Path) -> Path:
    """The zipapp of this tako (built into `cache`), but saying it is build "other" in its hello."""
    other = cache / "other" / "tako-agent-other.pyz"
    other.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(build_zipapp(cache)) as src, zipfile.ZipFile(other, "w") as out:
        for info in src.infolist():
            out.writestr(info, b"other" if info.filename == BUILD_FILE else src.read(info))
    return other
