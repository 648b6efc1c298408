"""`bridge SOCKET`: this process's stdin and stdout joined to the agent's control socket.

The command that installs the agent ends in it, so the client's first requests to the new agent (its
hello, a deploy's lease and build question) travel on that command's own SSH channel, written right
behind the zipapp before the agent even runs: no second channel to open, no round trip waiting for
the agent to start. It waits up to `wait` seconds for the socket to answer (systemd starts the agent
asynchronously), then copies both ways until either side ends.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

_BLOCK = 1 << 16
_POLL = 0.02


def bridge(path: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() > deadline:
                sys.stderr.write(f"tako-agent bridge: no agent answers on {path} ({e.strerror})\n")
                return 1
            time.sleep(_POLL)
    threading.Thread(target=_upstream, args=(sock,), daemon=True).start()
    while data := sock.recv(_BLOCK):
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]
    return 0


def _upstream(sock: socket.socket) -> None:
    """stdin to the agent; its end, as the end of what we send (the agent then closes its side)."""
    try:
        while data := os.read(0, _BLOCK):
            sock.sendall(data)
    except OSError:
        pass
    sock.shutdown(socket.SHUT_WR)
