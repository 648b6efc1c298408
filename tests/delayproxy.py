"""A TCP proxy that delays every byte by a fixed time each way, optionally paced to a bandwidth, in its
own process: a WAN link in front of the test fleet's sshd, on loopback.

    with DelayProxy([(s.address, s.port) for s in servers], Link.of(rtt_ms=100)) as proxy:
        slow = via_proxy(servers, proxy, tmp_path / "known_hosts")   # same hosts, reached through it

The model, per connection and direction: a chunk read at t leaves at t + delay; paced, it leaves
once the link has finished sending it (a running "link free at" clock) plus the delay. Each direction
is a queue of (due, bytes) drained by its own writer, so the delay is never a sleep before a write and
throughput is not capped by latency. The queue is bounded (`Link.buffer` bytes): past it the proxy stops
reading, and TCP's own flow control pushes back on the sender. A new connection costs one round trip
before any data flows, as TCP's handshake does on a real link: the client's first bytes leave no earlier
than 2·delay after the accept, and the target is connected 3·delay after it (when a real server's
accept would return), so what the target sends first arrives 4·delay after the client connected.

The proxy runs in a process of its own (stdlib only, quick to start). Measured at 100 ms RTT, pinged
from another process: as a thread of a process whose main thread is busy in Python (as a test running
the tako client is), the median round trip was 127 ms (p90 142); in its own process, 101.7 ms (p90
105), the same as with an idle host process. The process ends when its stdin closes (the parent
stopped it, or died), on SIGTERM, or after `LIFETIME` at the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fleet import FleetServer

CHUNK = 65_536
# Per direction: above the 2 MB channel windows of OpenSSH and asyncssh, so SSH's own flow control,
# not the proxy, is what limits a transfer on a long link (as on a real one).
DEFAULT_BUFFER = 8 * 1024 * 1024
LIFETIME = 4 * 3600.0  # no bench run lasts this long; a forgotten proxy still ends
START_TIMEOUT = 10.0
Target = tuple[str, int]


@dataclass(frozen=True)
class Link:
    """What the proxy does to each direction of each connection."""

    delay: float = 0.0  # seconds, one way
    rate: float | None = None  # bytes/s; None: as fast as loopback goes
    buffer: int = DEFAULT_BUFFER  # bytes held at most, per direction

    @classmethod
    def of(cls, rtt_ms: float, mbit: float | None = None) -> Link:
        """A link with this round-trip time, paced to `mbit` Mbit/s each way if given."""
        return cls(delay=rtt_ms / 2000, rate=None if mbit is None else mbit * 1e6 / 8)

    def segment(self) -> int:
        """Bytes a paced link releases at once: ~2 ms worth, at least one Ethernet payload, at most a
        read (so pacing is smooth without one timer per byte)."""
        if self.rate is None:
            return CHUNK
        return max(1460, min(CHUNK, int(self.rate * 0.002)))


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the delay proxy only serves loopback addresses, not {host}")


# --- the proxy itself (runs in the child process) ----------------------------------------------------


class _Direction:
    """One way of one connection: what is read from one side waits in a queue until due, then goes out."""

    def __init__(self, link: Link, not_before: float) -> None:
        self._link = link
        self._queue: deque[tuple[float, bytes]] = deque()  # (due, bytes); b"" is the end of the stream
        self._queued = 0
        self._filled = asyncio.Event()
        self._drained = asyncio.Event()
        self._free_at = not_before  # the link is busy until then (paced), or may not send before it

    async def pump_in(self, source: asyncio.StreamReader) -> None:
        """Read until the end of the stream (queued too), pausing while the queue is full."""
        loop = asyncio.get_running_loop()
        while True:
            while self._queued >= self._link.buffer:
                self._drained.clear()
                await self._drained.wait()
            data = await source.read(CHUNK)
            self._push(loop.time(), data)
            if not data:
                return

    def _push(self, now: float, data: bytes) -> None:
        rate, step = self._link.rate, self._link.segment()
        for start in range(0, max(len(data), 1), step):  # the end of the stream queues as one b""
            piece = data[start : start + step]
            self._free_at = max(self._free_at, now) + (len(piece) / rate if rate else 0.0)
            self._queue.append((self._free_at + self._link.delay, piece))
        self._queued += len(data)
        self._filled.set()

    async def pump_out(self, sink: asyncio.StreamWriter) -> None:
        """Write each piece when it is due (all that are due in one write), up to the end of the stream."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._filled.clear()
                await self._filled.wait()
            wait = self._queue[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            out: list[bytes] = []
            ended = False
            while self._queue and self._queue[0][0] <= now:
                piece = self._queue.popleft()[1]
                if not piece:
                    ended = True
                    break
                out.append(piece)
            if out:
                self._queued -= sum(map(len, out))
                self._drained.set()
                sink.write(b"".join(out))
                await sink.drain()
            if ended:
                if sink.can_write_eof():
                    sink.write_eof()  # a half-close travels on, as TCP's FIN does
                return


async def _relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target: Target, link: Link
) -> None:
    """One proxied connection, until both directions have ended or either side failed."""
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    up = _Direction(link, not_before=accepted + 2 * link.delay)  # the client's handshake took a round trip
    down = _Direction(link, not_before=accepted)
    writers = [client_writer]
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(up.pump_in(client_reader))
            await asyncio.sleep(3 * link.delay)  # when the target would accept over a real link
            server_reader, server_writer = await asyncio.open_connection(*target)
            writers.append(server_writer)
            group.create_task(up.pump_out(server_writer))
            group.create_task(down.pump_in(server_reader))
            group.create_task(down.pump_out(client_writer))
    except* OSError:
        pass  # refused or reset on either side: closing both below is the whole answer
    finally:
        for writer in writers:
            writer.close()


async def serve(targets: Sequence[Target], link: Link, lifetime: float = LIFETIME) -> None:
    """Listen on each target's address (a free port), print the ports as one JSON line, relay until
    stdin closes, SIGTERM, or `lifetime`; then close every connection."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    relays: set[asyncio.Task[None]] = set()
    handlers: set[asyncio.Task[None]] = set()

    def handler(target: Target) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The relay runs in a task of its own, cancelled at shutdown: cancelling this callback's
            # task instead makes Python 3.11's start_server log a spurious CancelledError.
            task, relay = asyncio.current_task(), asyncio.ensure_future(_relay(reader, writer, target, link))
            assert task is not None
            handlers.add(task)
            relays.add(relay)
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            finally:
                relays.discard(relay)
                handlers.discard(task)

        return on_client

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    servers = [await asyncio.start_server(handler(t), t[0], 0) for t in targets]
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime)
    for server in servers:
        server.close()
    for relay in list(relays):
        relay.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TCP delay proxy (see the module's docstring)")
    parser.add_argument("targets", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds, one way")
    parser.add_argument("--rate", type=float, help="bytes/s per direction")
    parser.add_argument("--buffer", type=int, default=DEFAULT_BUFFER)
    parser.add_argument("--lifetime", type=float, default=LIFETIME)
    args = parser.parse_args(argv)
    targets = []
    for spec in args.targets:
        host, port = spec.rsplit(":", 1)
        _check_loopback(host)
        targets.append((host, int(port)))
    asyncio.run(serve(targets, Link(args.delay, args.rate, args.buffer), args.lifetime))


# --- the parent's side --------------------------------------------------------------------------------


class DelayProxy:
    """The proxy process: `ports[i]`, on `targets[i]`'s own address, forwards to `targets[i]`."""

    def __init__(self, targets: Sequence[Target], link: Link, *, lifetime: float = LIFETIME) -> None:
        for host, _ in targets:
            _check_loopback(host)
        self.targets = list(targets)
        self.link = link
        self.ports: list[int] = []
        self._lifetime = lifetime
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, __file__, "--delay", repr(self.link.delay), "--buffer", str(self.link.buffer)]
        if self.link.rate is not None:
            argv += ["--rate", repr(self.link.rate)]
        argv += ["--lifetime", repr(self._lifetime), *(f"{h}:{p}" for h, p in self.targets)]
        # Its own session: a Ctrl-C meant for the bench must not end the proxy before the bench's cleanup.
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the delay proxy did not start within {START_TIMEOUT:g} s")
        self.ports = [int(p) for p in json.loads(line)]

    def stop(self) -> None:
        """Close its stdin (it closes every connection and exits); kill it if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def via_proxy(servers: Sequence[FleetServer], proxy: DelayProxy, known_hosts: Path) -> list[FleetServer]:
    """`servers` reached through `proxy` (started for their sshd, in this order): the same hosts and
    roots, the proxy's ports, and a `known_hosts` file written with their keys under `[address]:port`,
    since OpenSSH and asyncssh look a host key up by host and port."""
    # Imported here so that the proxy's own process, which runs this file, stays stdlib-only.
    from tako_core.transport.inprocess import known_hosts_line

    if [(s.address, s.port) for s in servers] != proxy.targets:
        raise ValueError(f"the proxy forwards to {proxy.targets}, not to these servers")
    # The fleet's HTTP(S) ports come from below the ephemeral range (fleet.router_port): the proxy's
    # port-0 binds cannot have taken one of them, so they stay.
    moved = [
        replace(s, port=port, known_hosts=known_hosts) for s, port in zip(servers, proxy.ports, strict=True)
    ]
    known_hosts.write_text("".join(known_hosts_line(s.address, s.port, s.host.host_key) for s in moved))
    return moved


if __name__ == "__main__":
    main()
