"""Installing, upgrading and starting the agent on a server, over one Connection.

The agent reports only its version, so which zipapp it runs is recorded on the server: after a
successful start, `<root>/bin/tako-agent.build` holds the zipapp's name (version + content hash).
It is removed before any change and written last, so a half-done install always counts as stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

import tako_core
from tako_core.config import Server
from tako_core.errors import AgentError
from tako_core.transport.agent_client import AgentClient
from tako_core.transport.agent_zipapp import build_zipapp
from tako_core.transport.connection import Connection
from tako_core.transport.failures import AgentNotRunning, where

Step = Callable[[str], None]

# How long a freshly started agent may take to answer on its socket.
START_TIMEOUT = 30.0
_POLL_INTERVAL = 0.1

# Prepares the root and says how to start the agent: systemd when it runs and we may write units.
_PREPARE = """
mkdir -p {root}/bin {root}/run {root}/log && rm -f {stamp} || exit 3
command -v python3 >/dev/null || {{ echo "no python3 on the server" >&2; exit 3; }}
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {{
    echo "python3 on the server is $(python3 -V 2>&1), tako needs 3.10 or newer" >&2; exit 3; }}
if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then echo systemd; else echo detached; fi
"""

# Stops the agent named in the pid file (only if that pid really is a tako agent): it holds the
# root's lock, so it must be gone before the new one starts. Then runs the start command.
_RESTART = """
pidfile={pid_file}
pid=$(cat "$pidfile" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) pid= ;; esac
if [ -n "$pid" ] && tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q tako-agent; then
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
        sleep 0.1; i=$((i+1))
    done
    kill -KILL "$pid" 2>/dev/null
fi
{start}
"""


@dataclass(frozen=True)
class AgentState:
    """What `inspect_agent` found: the running agent (if any answers) and whether it is current."""

    client: AgentClient | None
    current: bool
    reason: str  # why it is not current; "" when it is


def agent_cache_dir() -> Path:
    return platformdirs.user_cache_path("tako") / "agent"


def systemd_unit_name(root: str) -> str:
    """`tako-agent.service` for the default root; other roots get their own unit."""
    if root.rstrip("/") == "/opt/tako":
        return "tako-agent.service"
    return f"tako-agent-{hashlib.sha256(root.encode()).hexdigest()[:8]}.service"


def systemd_unit(server: Server, python: str = "/usr/bin/env python3") -> str:
    """The unit that keeps the agent of `server.root` running (restarted by systemd if it dies)."""
    command = shlex.join(_serve_args(server))
    return (
        "[Unit]\n"
        f"Description=tako agent ({server.root})\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={python} {command}\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=60\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


async def inspect_agent(conn: Connection, build: str) -> AgentState:
    """Ask the running agent who it is; `build` is the zipapp name this client would install."""
    stamp, answer = await asyncio.gather(
        conn.run(f"cat {shlex.quote(_stamp_path(conn.server))} 2>/dev/null"),
        conn.agent(),
        return_exceptions=True,
    )
    if isinstance(answer, AgentNotRunning):
        return AgentState(None, False, "not running")
    if isinstance(answer, AgentError):  # it answers, but not in a way this client understands
        return AgentState(None, False, f"unusable ({answer.message})")
    if isinstance(answer, BaseException):
        raise answer
    if isinstance(stamp, BaseException):
        await answer.close()
        raise stamp
    version = answer.info.agent_version
    if version != tako_core.__version__:
        return AgentState(answer, False, f"version {version}, this client is {tako_core.__version__}")
    if stamp.stdout.strip() != build:
        return AgentState(answer, False, "installed from another build of tako")
    return AgentState(answer, True, "")


async def ensure_agent(
    conn: Connection, *, on_step: Step | None = None, cache_dir: Path | None = None
) -> AgentClient:
    """A client for an agent of this client's exact build: installed and (re)started when needed."""
    zipapp = await asyncio.to_thread(build_zipapp, cache_dir or agent_cache_dir())
    state = await inspect_agent(conn, zipapp.stem)
    if state.current and state.client is not None:
        return state.client
    if state.client is not None:
        busy = [a for a in await state.client.status() if a.lease is not None]
        await state.client.close()
        if busy:
            # Restarting the agent would stop that deploy's release command or rollout midway.
            a = busy[0]
            assert a.lease is not None
            raise AgentError(
                f"the agent on {where(conn.server)} needs an upgrade ({state.reason}), but "
                f"{a.app}/{a.env} is being deployed by {a.lease.holder}",
                hint="wait until that deploy ends, then run this again",
            )
    step = on_step or (lambda _: None)
    step(f"agent {state.reason}: installing {zipapp.name}")
    await install_agent(conn, zipapp, step)
    client = await _wait_for_agent(conn)
    if client.info.agent_version != tako_core.__version__:
        await client.close()
        raise AgentError(
            f"the agent on {where(conn.server)} still reports version {client.info.agent_version}",
            hint=f"another agent may hold {conn.server.root}; stop it and run "
            f"`tako servers setup {conn.server.name}` again",
        )
    await _checked(
        conn, f"printf '%s\\n' {shlex.quote(zipapp.stem)} > {shlex.quote(_stamp_path(conn.server))}"
    )
    return client


async def install_agent(conn: Connection, zipapp: Path, step: Step) -> None:
    """Upload `zipapp` as `<root>/bin/tako-agent.pyz`, stop the old agent, start the new one."""
    # Few round trips: each command over SSH pays for a login shell on the server.
    server = conn.server
    prepare = _PREPARE.format(root=shlex.quote(server.root), stamp=shlex.quote(_stamp_path(server)))
    mode = (await _checked(conn, prepare)).strip()
    await conn.put(zipapp, f"{server.root}/bin/tako-agent.pyz")
    unit: bytes | None = None
    if mode == "systemd":
        step("starting the agent with systemd")
        name = systemd_unit_name(server.root)
        path = f"/etc/systemd/system/{name}"
        start = (
            f"cat > {path}.tmp && mv {path}.tmp {path} && systemctl daemon-reload"
            f" && systemctl enable {name} 2>/dev/null && systemctl restart {name}"
        )
        unit = systemd_unit(server).encode()
    else:
        step("starting the agent (detached)")
        start = shlex.join(["python3", *_serve_args(server), "--detach"])
    pid_file = shlex.quote(f"{server.root}/run/agent.pid")
    await _checked(
        conn, _RESTART.format(pid_file=pid_file, start=start), input=unit, limit=START_TIMEOUT + 15
    )


async def _wait_for_agent(conn: Connection) -> AgentClient:
    """The new agent, once it answers (systemd starts it asynchronously)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        try:
            return await conn.agent()
        except AgentNotRunning:
            if asyncio.get_running_loop().time() > deadline:
                raise AgentError(
                    f"the agent on {where(conn.server)} did not answer within {START_TIMEOUT:g} s",
                    hint=f"see its log: {conn.server.root}/log/agent.log on the server",
                ) from None
            await asyncio.sleep(_POLL_INTERVAL)


async def _checked(conn: Connection, script: str, *, input: bytes | None = None, limit: float = 60) -> str:
    """Run `script`; a non-zero exit becomes an AgentError carrying its last stderr lines."""
    result = await conn.run(script, input=input, timeout=limit)
    if result.exit_status != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:]) or f"exit status {result.exit_status}"
        raise AgentError(
            f"setting up the agent on {where(conn.server)} failed: {tail}",
            hint=f"fix the server, then run `tako servers setup {conn.server.name}` again",
        )
    return result.stdout


def _serve_args(server: Server) -> list[str]:
    return [
        f"{server.root}/bin/tako-agent.pyz",
        "serve",
        "--root",
        server.root,
        "--http-host",
        server.http_host,
        "--http-port",
        str(server.http_port),
        *(arg for address in server.trusted_proxies for arg in ("--trusted-proxy", address)),
    ]


def _stamp_path(server: Server) -> str:
    return f"{server.root}/bin/tako-agent.build"
