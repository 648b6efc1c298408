"""Readiness: probing an instance's health path over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket

from tako_core.agent.compat import WaitTimeout

PROBE_TIMEOUT = 2.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the instance binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def probe(port: int, path: str) -> bool:
    """True when GET `path` answers 2xx or 3xx within the probe timeout."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tako-agent\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        status = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT)
    except (WaitTimeout, OSError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = status.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] in _HEALTHY


_HEALTHY = {str(code).encode() for code in range(200, 400)}
