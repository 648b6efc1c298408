"""Turning asyncssh and socket failures into TransportErrors a person can act on."""

from __future__ import annotations

import socket
from pathlib import Path

from tako_core.config import Server
from tako_core.errors import TransportError
from tako_core.transport.sshlib import asyncssh


class AgentNotRunning(TransportError):
    """Nothing answers on the agent's socket (not installed, stopped, or a different root)."""


def where(server: Server) -> str:
    """How a server is named in messages: `web1 (root@10.0.0.5:22)`."""
    user = f"{server.user}@" if server.user else ""
    return f"{server.name} ({user}{server.host}:{server.port})"


def known_hosts_path(server: Server) -> Path:
    """The server's known_hosts file, or the user's own when the inventory names none."""
    return (server.known_hosts or Path("~/.ssh/known_hosts")).expanduser()


def _is_known(server: Server, known_hosts: Path) -> bool:
    """Whether known_hosts has any key at all for this host (else the key is not wrong, just unknown)."""
    try:
        found = asyncssh.read_known_hosts(str(known_hosts)).match(server.host, server.host, server.port)
    except (OSError, ValueError):
        return False
    return bool(found[0] or found[1])


def connect_error(server: Server, exc: BaseException) -> TransportError:
    """A failure to connect or log in, explained."""
    target = where(server)
    known_hosts = known_hosts_path(server)
    entry = server.host if server.port == 22 else f"[{server.host}]:{server.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if _is_known(server, known_hosts):
            return TransportError(
                f"host key for {target} does not match known_hosts {known_hosts}",
                hint=f"if the server was reinstalled, remove its old key with "
                f"`ssh-keygen -R '{entry}' -f {known_hosts}` and add the new one after checking its "
                "fingerprint; otherwise someone may be intercepting the connection",
            )
        return TransportError(
            f"{target} is not in known_hosts {known_hosts}",
            hint=f"add its key after checking the fingerprint: "
            f"`ssh-keyscan -p {server.port} {server.host} >> {known_hosts}`",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        key = f"key {server.identity}" if server.identity else "your default SSH keys"
        return TransportError(
            f"{target} refused the login with {key}",
            hint="authorise the public key in the server's ~/.ssh/authorized_keys, or set the right "
            "user and identity (`tako servers add NAME --user U --identity KEY`)",
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransportError(
            f"cannot connect to {target}: connection refused",
            hint="check that sshd runs on the server and that host and port are right",
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"timed out connecting to {target}",
            hint="check the address, the network and any firewall between here and the server",
        )
    if isinstance(exc, socket.gaierror):
        return TransportError(
            f"cannot resolve the host name of {target}", hint="check `host` in servers.toml"
        )
    if isinstance(exc, asyncssh.KeyImportError):
        return TransportError(
            f"cannot read the SSH key {server.identity} for {server.name}: {exc}",
            hint="point `identity` at a private key file (OpenSSH or PEM format, unencrypted)",
        )
    if isinstance(exc, FileNotFoundError) and exc.filename == str(known_hosts):
        return TransportError(
            f"known_hosts file {known_hosts} (needed to verify {target}) does not exist",
            hint=f"create it with the server's key after checking the fingerprint: "
            f"`ssh-keyscan -p {server.port} {server.host} >> {known_hosts}`",
        )
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return TransportError(
            f"{exc.filename} (needed to connect to {target}) does not exist",
            hint="fix the path in servers.toml (identity, known_hosts)",
        )
    return lost(server, exc)


def lost(server: Server, exc: BaseException, doing: str = "") -> TransportError:
    """A connection that failed while in use."""
    during = f" while {doing}" if doing else ""
    reason = _reason(exc)
    return TransportError(
        f"SSH connection to {where(server)} failed{during}: {reason}",
        hint="check the server is up and reachable; tako reconnects on the next attempt",
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
