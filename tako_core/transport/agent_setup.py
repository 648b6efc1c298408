"""Installing, upgrading and starting the agent on a server, over one Connection.

The agent says in its hello which zipapp it runs (version + content hash, `AgentInfo.build_id`), so a
client tells a stale agent from the hello alone. An install is one command: it says who we are
(root, passwordless sudo or a user on their own; the server's python3), then takes on its stdin the
install script written for that answer (run through `sudo -n` when we are not root), the zipapp and
the router's parser wheel; the old agent is stopped and the new one started, and a half-done install
leaves the old build, which still counts as stale. The command ends as a `bridge` to the new
agent's socket, so the client's hello (and a deploy's lease and build question) ride on its channel
right behind the zipapp: no second command, no channel to open after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

import tako_core
from tako_core.config import Server
from tako_core.errors import AgentError
from tako_core.transport.agent_channel import Reader
from tako_core.transport.agent_client import AgentClient
from tako_core.transport.agent_wheels import PROBE, ServerPython, fetch_httptools, unpack_command
from tako_core.transport.agent_zipapp import build_zipapp
from tako_core.transport.connection import Connection
from tako_core.transport.failures import AgentNotRunning, where
from tako_core.transport.sshlib import asyncssh

Step = Callable[[str], None]

# How long a freshly started agent may take to answer on its socket.
START_TIMEOUT = 30.0

# The one command of an install. First, who we are on the server: its python3 (for the parser's
# wheel) and the wheel unpacked for it last time, one line each; then root, a user with passwordless
# sudo, or a user on their own, plus what a user on their own may do (write the root? bind the
# port?). Then it reads the install script the client wrote for that answer from stdin (its length
# in bytes on a line first; 0 or nothing: stop, nothing changed) and runs it, as root where we may
# (through `sudo -n`), on the rest of stdin; a script cut short (the connection lost) never runs.
_SETUP = """
{probe}
printf '%s\\n' "$(cat {wheel_marker} 2>/dev/null)"
if [ "$(id -u)" = 0 ]; then how=root; elif sudo -n true 2>/dev/null; then how=sudo; else how=user; fi
writable=no
if [ $how = user ] && mkdir -p {root} 2>/dev/null && [ -w {root} ]; then writable=yes; fi
low=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)
echo "$how $(id -un) $writable $low $HOME"
IFS= read -r size && [ "$size" -gt 0 ] 2>/dev/null || exit 0
script=$(head -c "$size"; echo .) && script=${{script%.}}  # the dot keeps its last newlines
[ "$(printf '%s' "$script" | wc -c)" -eq "$size" ] || {{
    echo "the install script did not arrive whole" >&2; exit 3; }}
if [ $how = sudo ]; then exec sudo -n sh -c "$script"; fi
exec sh -c "$script"
"""

# The install script (run by _SETUP, as root when we may): checks the server and takes the zipapp
# ({size} bytes) from stdin, then the parser's wheel when one is sent. Then the agent named in
# the pid file (only if that pid really is a tako agent) restarts in place when it runs the command
# it would be started with (and, under systemd, the unit is unchanged): it stops answering (its
# socket goes), hands its router over and execs the build just installed, same pid, instances
# kept, and we wait for the new socket; an agent too old for that ignores SIGWINCH. Otherwise it
# is stopped (it holds the root's lock, so it must be gone before the new one starts) and the new
# one started with systemd when it runs and we are root, else detached. Says which on stdout:
# "systemd|detached started|in-place", then becomes the `bridge` to the new agent's socket: the
# rest of stdin and stdout are the client's connection to it.
_INSTALL = """
mkdir -p {root}/bin {root}/run {root}/log && chmod 755 {root} {root}/bin || exit 3
command -v python3 >/dev/null || {{ echo "no python3 on the server" >&2; exit 3; }}
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {{
    echo "python3 on the server is $(python3 -V 2>&1), tako needs 3.10 or newer" >&2; exit 3; }}
command -v openssl >/dev/null || {{
    echo "no openssl command on the server (the router reads HTTPS certificates with it):" \
        "install the openssl package" >&2; exit 3; }}
head -c {size} > {pyz}.tmp && [ "$(wc -c < {pyz}.tmp)" -eq {size} ] && chmod 755 {pyz}.tmp \\
    && mv {pyz}.tmp {pyz} || {{ echo "the agent's zipapp did not arrive whole" >&2; exit 3; }}
{wheel}
mode=detached; same_unit=yes
if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
    mode=systemd  # a changed unit needs systemd to restart the agent
    printf '%s' {unit} | cmp -s - {unit_path} || same_unit=no
fi
pidfile={pid_file}
pid=$(cat "$pidfile" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) pid= ;; esac
if [ -n "$pid" ] && ! tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q tako-agent; then pid=; fi
if [ -n "$pid" ] && [ $same_unit = yes ] && tr '\\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- {command}; then
    before=$(stat -c '%i %z' {socket} 2>/dev/null)
    kill -WINCH "$pid"
    i=0
    while [ "$(stat -c '%i %z' {socket} 2>/dev/null)" = "$before" ] && [ $i -lt 50 ]; do
        sleep 0.1; i=$((i+1))
    done
    if [ $i -lt 50 ]; then  # it took the signal: wait for its successor's socket (hand-over <= 20 s)
        while [ ! -S {socket} ] && [ $i -lt 350 ]; do sleep 0.1; i=$((i+1)); done
        echo $mode in-place
        exec {bridge}
    fi
fi
if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
        sleep 0.1; i=$((i+1))
    done
    kill -KILL "$pid" 2>/dev/null
fi
echo $mode started
if [ $mode = systemd ]; then
    printf '%s' {unit} > {unit_path}.tmp && mv {unit_path}.tmp {unit_path} && systemctl daemon-reload \\
        && systemctl enable {unit_name} 2>/dev/null && systemctl restart {unit_name} || exit 1
else
    {detached} || exit 1
fi
exec {bridge}
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


def systemd_unit(server: Server, client_user: str | None = None, python: str = "/usr/bin/env python3") -> str:
    """The unit that keeps the agent of `server.root` running (restarted by systemd if it dies).

    KillMode=process: the apps' instances outlive an agent that is killed or restarts, and the
    next agent adopts them; `systemctl stop` still stops them all, as the agent stops its
    instances on SIGTERM (only processes an app moved out of its instance's process group stay).

    Hardening: only options that leave the agent able to switch users and run installs, so no
    ProtectSystem= (creating an app's user writes /etc), no capability bounding set and no
    ProtectHome= (a root may live under /home)."""
    command = shlex.join(_serve_args(server, client_user))
    return (
        "[Unit]\n"
        f"Description=tako agent ({server.root})\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={python} {command}\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        "LimitNOFILE=65536\n"
        "UMask=0077\n"
        "NoNewPrivileges=yes\n"
        "RestrictSUIDSGID=yes\n"
        "PrivateTmp=yes\n"
        "ProtectKernelTunables=yes\n"
        "ProtectKernelModules=yes\n"
        "ProtectControlGroups=yes\n"
        "ProtectHostname=yes\n"
        "LockPersonality=yes\n"
        "RestrictRealtime=yes\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


async def inspect_agent(
    conn: Connection, build: str, behind_hello: Callable[[AgentClient], None] | None = None
) -> AgentState:
    """Ask the running agent who it is; `build` is the zipapp name this client would install
    (`behind_hello`: see AgentClient.connect)."""
    try:
        client = await conn.agent(behind_hello)
    except AgentNotRunning:
        return AgentState(None, False, "not running")
    except AgentError as err:  # it answers, but not in a way this client understands
        return AgentState(None, False, f"unusable ({err.message})")
    info = client.info
    if info.agent_version != tako_core.__version__:
        return AgentState(
            client, False, f"version {info.agent_version}, this client is {tako_core.__version__}"
        )
    if f"tako-agent-{info.agent_version}-{info.build_id}" != build:
        return AgentState(client, False, "installed from another build of tako")
    return AgentState(client, True, "")


async def ensure_agent(
    conn: Connection,
    *,
    on_step: Step | None = None,
    cache_dir: Path | None = None,
    restart: bool = False,
    behind_hello: Callable[[AgentClient], None] | None = None,
    holder: str | None = None,
) -> AgentClient:
    """A client for an agent of this client's exact build: installed and (re)started when needed,
    or when asked to `restart` (an upgrade takes the same path: in place, instances kept).
    `behind_hello` goes to the running agent's AgentClient.connect; what it asks a stale agent is
    lost when that agent is replaced (the client returned is another one). A lease of `holder`'s
    (taken beside the hello) does not keep the agent from being replaced: it is let go first."""
    zipapp = await asyncio.to_thread(build_zipapp, cache_dir or agent_cache_dir())
    state = await inspect_agent(conn, zipapp.stem, behind_hello)
    if state.current and state.client is not None and not restart:
        return state.client
    if state.client is not None:
        statuses = await state.client.status()
        busy = [a for a in statuses if a.lease is not None and a.lease.holder != holder]
        for a in statuses:  # ours, taken beside the hello: let go, or a failed upgrade leaves it held
            if a.lease is not None and a.lease.holder == holder:
                with contextlib.suppress(AgentError):
                    await state.client.lease_release(a.app, a.env, a.lease.holder)
        await state.client.close()
        if busy:
            # Restarting the agent would stop that deploy's release command or rollout midway.
            a = busy[0]
            assert a.lease is not None
            raise AgentError(
                f"the agent on {where(conn.server)} needs a restart ({state.reason or 'asked for'}), but "
                f"{a.app}/{a.env} is being deployed by {a.lease.holder}",
                hint="wait until that deploy ends, then run this again",
            )
    step = on_step or (lambda _: None)
    step(f"agent {state.reason or 'current'}: installing {zipapp.name}")
    client = await install_agent(conn, zipapp, step, behind_hello)
    if client.info.agent_version != tako_core.__version__:
        await client.close()
        raise AgentError(
            f"the agent on {where(conn.server)} still reports version {client.info.agent_version}",
            hint=f"another agent may hold {conn.server.root}; stop it and run "
            f"`tako servers setup {conn.server.name}` again",
        )
    return client


@dataclass(frozen=True)
class Login:
    """Who setup runs as on the server, and so how it does the root-only parts."""

    how: str  # "root", "sudo" (passwordless) or "user" (on their own)
    user: str
    home: str
    python: ServerPython | None  # None: no python3 answered (the install then says so)
    wheel: str  # the name of the httptools wheel unpacked in bin/lib; "" when none is
    low: int  # the lowest port the user may bind without root

    @property
    def client_user(self) -> str | None:
        """The user the agent hands its socket to when it runs as root for them."""
        return self.user if self.how == "sudo" else None


async def install_agent(
    conn: Connection, zipapp: Path, step: Step, behind_hello: Callable[[AgentClient], None] | None = None
) -> AgentClient:
    """Install `zipapp` as `<root>/bin/tako-agent.pyz` (with the router's parser wheel when the
    server needs it) and restart the agent in place, or stop the old one and start the new one, all
    in one command (_SETUP): who we are comes back on its stdout, the install script written for
    that goes in on its stdin, and the command ends bridged to the new agent. Returns a client of
    the new agent over that command's own channel (`behind_hello`: see AgentClient.connect)."""
    server = conn.server
    process = await conn.start(
        _SETUP.format(
            root=shlex.quote(server.root),
            probe=PROBE,
            wheel_marker=shlex.quote(f"{server.root}/bin/lib/.wheel"),
        )
    )
    try:
        login = await _login(server, process)
        if login.how == "user" and server.https_port < login.low:
            # Not an error: an agent set up before HTTPS, on a port above 1023, must keep upgrading.
            step(
                f"warning: port {server.https_port} needs root, so this agent serves no HTTPS; for "
                f"HTTPS: `tako servers add {server.name} --host {server.host} --user {login.user} "
                f"--root {server.root} --http-port {server.http_port} --https-port 8443 --replace`"
            )
        wheel = await _parser_wheel(login, zipapp.parent, step)
        data = await asyncio.to_thread(zipapp.read_bytes)
        wheel_data = await asyncio.to_thread(wheel.read_bytes) if wheel is not None else b""
        script = _install_script(server, login, len(data), wheel, len(wheel_data)).encode()
        process.stdin.write(b"%d\n" % len(script) + script + data + wheel_data)
    except BaseException:
        process.close()  # before the script: the command stops there, nothing changed
        raise
    client, out = await _bridged(conn, process, behind_hello)
    mode, how = out.split()[:2]
    step(f"restarted the agent in place ({mode})" if how == "in-place" else f"started the agent ({mode})")
    if mode == "detached" and login.how == "user":
        step(
            "warning: a detached agent does not come back after a reboot; with passwordless sudo "
            "for this user, `tako servers setup` installs a systemd unit instead"
        )
    return client


def _install_script(server: Server, login: Login, size: int, wheel: Path | None, wheel_size: int) -> str:
    unit_name = systemd_unit_name(server.root)
    pyz, socket = f"{server.root}/bin/tako-agent.pyz", f"{server.root}/run/tako.sock"
    unpack = ""
    if wheel is not None:  # the agent must start with it: unpacked before the agent starts
        unpack = (
            f"head -c {wheel_size} | {unpack_command(f'{server.root}/bin/lib', wheel)} "
            '|| { echo "cannot unpack the HTTP parser wheel" >&2; exit 3; }'
        )
    return _INSTALL.format(
        size=size,
        wheel=unpack,
        bridge=shlex.join(["python3", pyz, "bridge", socket, "--wait", f"{START_TIMEOUT:g}"]),
        root=shlex.quote(server.root),
        pyz=shlex.quote(pyz),
        pid_file=shlex.quote(f"{server.root}/run/agent.pid"),
        unit=shlex.quote(systemd_unit(server, login.client_user)),
        unit_path=f"/etc/systemd/system/{unit_name}",
        unit_name=unit_name,
        socket=shlex.quote(socket),
        command=shlex.quote(" " + " ".join(_serve_args(server, login.client_user)) + " "),
        detached=shlex.join(["python3", *_serve_args(server, login.client_user), "--detach"]),
    )


class _Stdin:
    """The install command's stdin as the agent client's writer. Closing it ends the input rather
    than the channel: the bridge then ends its agent connection and exits, and what the command
    wrote on stderr can still be read."""

    def __init__(self, stdin: asyncssh.SSHWriter[bytes]) -> None:
        self._stdin = stdin

    def write(self, data: bytes) -> None:
        self._stdin.write(data)

    async def drain(self) -> None:
        await self._stdin.drain()

    def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._stdin.write_eof()


class _ResultLine:
    """The install command's stdout: its first line (its result) set aside, the rest the agent's."""

    def __init__(self, stdout: Reader) -> None:
        self._stdout = stdout
        self.line = ""
        self._read = False

    async def readline(self) -> bytes | str:
        if not self._read:
            self._read = True
            first = await self._stdout.readline()
            self.line = first.decode(errors="replace") if isinstance(first, bytes) else first
            if not first:
                return first
        return await self._stdout.readline()


async def _bridged(
    conn: Connection,
    process: asyncssh.SSHClientProcess[bytes],
    behind_hello: Callable[[AgentClient], None] | None,
) -> tuple[AgentClient, str]:
    """The client of the agent the install command ends bridged to, its hello written right behind
    what the command was sent, and the command's result line."""
    stdout = _ResultLine(process.stdout)
    try:
        client = await AgentClient.connect(stdout, _Stdin(process.stdin), behind_hello, START_TIMEOUT + 15)
    except AgentError:  # the script failed (its stdout ended), or the agent never answered
        raise await _failed(conn.server, process) from None
    return client, stdout.line


async def _failed(server: Server, process: asyncssh.SSHClientProcess[bytes]) -> AgentError:
    """The install command failed: the error, with the last lines it wrote on stderr."""
    try:
        stderr = (await asyncio.wait_for(process.stderr.read(), 5)).decode(errors="replace")
    except TimeoutError:
        stderr = ""
    process.close()
    tail = "\n".join(stderr.strip().splitlines()[-5:]) or "the new agent did not answer"
    return AgentError(
        f"setting up the agent on {where(server)} failed: {tail}",
        hint=f"fix the server, then run `tako servers setup {server.name}` again",
    )


async def _parser_wheel(login: Login, cache_dir: Path, step: Step) -> Path | None:
    """The router's fast parser for the server's python3: its own httptools, else the wheel fetched
    here, to unpack into the agent's bin/lib (None: it is there already, or none is needed), else h11."""
    python = login.python
    if python is None:
        return None
    if python.has_httptools:
        step("HTTP parser: httptools (the server's python3 has it)")
        return None
    fetched = await asyncio.to_thread(fetch_httptools, python, cache_dir)
    if fetched.wheel is None:
        step(f"HTTP parser: h11, pure Python ({fetched.reason})")
        return None
    step(f"HTTP parser: httptools, from {fetched.wheel.name}")
    return fetched.wheel if fetched.wheel.name != login.wheel else None


async def _login(server: Server, process: asyncssh.SSHClientProcess[bytes]) -> Login:
    """Who we are, as _SETUP's first lines say; a user without sudo gets the choices that work,
    before anything is changed."""
    try:
        async with asyncio.timeout(START_TIMEOUT):
            lines = [(await process.stdout.readline()).decode(errors="replace") for _ in range(3)]
    except TimeoutError:
        raise AgentError(
            f"{where(server)} did not say who we are there within {START_TIMEOUT:g} s",
            hint="check that a plain `ssh` login to it runs commands (a shell startup file may hang)",
        ) from None
    probe, wheel, who = lines
    if not who.endswith("\n"):
        raise await _failed(server, process)
    how, user, writable, low, home = who.split(maxsplit=4)
    login = Login(how, user, home.strip(), ServerPython.parse(probe), wheel.strip(), int(low))
    if how != "user":
        return login
    own_root = f"{login.home}/tako"
    fixes = (
        f"either let {user} use sudo without a password (as root on the server: "
        f"`echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/tako`), or run the agent as "
        f"{user} under its home on a port above {int(low) - 1}: `tako servers add {server.name} "
        f"--host {server.host} --user {user} --root {own_root} --http-port 8080 --https-port 8443 --replace`"
    )
    if writable != "yes":
        raise AgentError(
            f"{user} on {where(server)} may not write {server.root} and has no passwordless sudo",
            hint=fixes,
        )
    if server.http_port < login.low:
        raise AgentError(
            f"port {server.http_port} on {where(server)} needs root, and {user} has no passwordless sudo",
            hint=fixes,
        )
    return login


def _serve_args(server: Server, client_user: str | None) -> list[str]:
    return [
        f"{server.root}/bin/tako-agent.pyz",
        "serve",
        "--root",
        server.root,
        "--http-host",
        server.http_host,
        "--http-port",
        str(server.http_port),
        # The agent's default (443) is left out: the command line of an agent set up before HTTPS
        # then stays the same, so an upgrade restarts it in place.
        *(["--https-port", str(server.https_port)] if server.https_port != 443 else []),
        *(arg for address in server.trusted_proxies for arg in ("--trusted-proxy", address)),
        *(["--client-user", client_user] if client_user else []),
    ]
