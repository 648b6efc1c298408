"""Looking at an env's servers without changing them: what runs, what is kept, who deploys.

The types a `ServerView` holds are exported here: front ends take them from the core, never from the agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tako_core.config import ResolvedEnv, Server
from tako_core.errors import TakoError
from tako_core.transport import Connection
from tako_core.transport.agent_client import (
    AppStatus,
    AutoTlsStatus,
    CertificateInfo,
    InstanceStatus,
    LeaseInfo,
    ReleaseInfo,
)

__all__ = [
    "AppStatus",
    "AutoTlsStatus",
    "CertificateInfo",
    "InstanceStatus",
    "LeaseInfo",
    "ReleaseInfo",
    "ServerView",
    "auto_tls_line",
    "certificate_line",
    "days_left",
    "inspect",
]


@dataclass(frozen=True)
class ServerView:
    server: str
    agent_version: str | None = None
    status: AppStatus | None = None  # None: the app/env was never deployed there
    releases: tuple[ReleaseInfo, ...] = ()
    error: str | None = None  # the server could not be asked


def days_left(cert: CertificateInfo, now: float) -> float:
    """Days until `cert` expires (negative once it has)."""
    return (cert.not_after - now) / 86400


def certificate_line(cert: CertificateInfo, now: float) -> str:
    """A certificate for people: its names, issuer and expiry."""
    expires = time.strftime("%Y-%m-%d", time.gmtime(cert.not_after))
    days = days_left(cert, now)
    left = f"in {days:.0f} days" if days >= 0 else "EXPIRED"
    return f"https: {', '.join(cert.names)} (issuer {cert.issuer}), expires {expires} ({left})"


def auto_tls_line(auto: AutoTlsStatus, now: float) -> str:
    """An automatic certificate's progress for people: role, state, last error, next attempt."""
    role = "leader (orders)" if auto.leader is None else f"follower of {auto.leader}"
    line = f"auto certificate: {role}, {auto.state}"
    if auto.last_error:
        line += f": {auto.last_error}"
    if auto.next_attempt is not None:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(auto.next_attempt))
        line += f"; next {'check' if auto.state == 'issued' else 'attempt'} {when}"
    return line


async def inspect(target: ResolvedEnv) -> list[ServerView]:
    """Every server of the env, asked in parallel; an unreachable server is a view with an error."""
    return list(await asyncio.gather(*(_view(server, target) for server in target.servers)))


async def _view(server: Server, target: ResolvedEnv) -> ServerView:
    try:
        async with Connection.open(server) as conn:
            agent = await conn.agent()
            try:
                statuses = await agent.status()
                releases = await agent.releases(target.app, target.env)
            finally:
                await agent.close()
    except TakoError as err:
        return ServerView(server=server.name, error=err.message)
    status = next((s for s in statuses if (s.app, s.env) == (target.app, target.env)), None)
    return ServerView(
        server=server.name, agent_version=agent.info.agent_version, status=status, releases=tuple(releases)
    )
