"""A deploy's part in automatic certificates (`tls = "auto"`), and `tako tls renew`.

One ACME order per env: the deploy's leader orders and renews, the other servers are its followers
(tako_core/agent/autocerts.py has the agent's side). Right after connecting, every server gets
Op.TLS_AUTO: the leader first, whose answer (a sync token, a secret, and its key's pin) goes on to the
followers, with the leader's address and ports; the leader holds its order until every follower has
its settings (the CA's validation may reach any of them), then is told to go. This runs beside the
upload and install. After the rollout the deploy waits a bounded time (DeployOptions.tls_wait) for
the leader's certificate, asks every follower to fetch it at once, and says per server which
certificate it serves, or, when there is none yet (DNS not pointing here, the CA unreachable), the
CA's error as a warning: the deploy does not fail for it, the agents keep trying on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from tako_core.config import ResolvedEnv, Server
from tako_core.config.files import located
from tako_core.config.schema import Invalid
from tako_core.deploy.session import ServerSession
from tako_core.errors import TakoError
from tako_core.events import EventSink, Notice
from tako_core.transport import Connection
from tako_core.transport.agent_client import AppStatus, CertificateInfo, TlsAutoSet

STATUS_POLL = 0.5  # seconds between looks at the leader's progress while the deploy waits


def acme_settings(target: ResolvedEnv) -> dict[str, Any]:
    """What every server of the env is told: the names and the ACME account and CA (the CA bundle's
    text: the file is on this machine)."""
    tls = target.tls_settings
    ca_pem = None
    if tls.acme_ca_bundle is not None:
        try:
            ca_pem = tls.acme_ca_bundle.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "it is not a PEM (ASCII) file"
            invalid = Invalid(
                ("tls", "acme_ca_bundle"),
                f"cannot read the ACME CA bundle {tls.acme_ca_bundle}: {reason}",
                "put the PEM certificate of the CA that serves the ACME directory there",
                at_value=True,
            )
            raise located(invalid, target.config_path, target.config_path.read_text()) from None
    return {
        "names": list(target.routes),
        "directory": tls.acme_directory,
        "email": tls.email,
        "ca_pem": ca_pem,
    }


class AutoTls:
    """One deploy's TLS_AUTO exchanges: the leader's answer passed on to the followers."""

    def __init__(self, target: ResolvedEnv) -> None:
        self.target = target
        self.settings = acme_settings(target)
        self._followers = len(target.servers) - 1
        self._told = 0
        self._answer: asyncio.Future[TlsAutoSet] | None = None
        self._all_told: asyncio.Event | None = None

    def _leader_answer(self) -> asyncio.Future[TlsAutoSet]:
        if self._answer is None:
            self._answer = asyncio.get_running_loop().create_future()
            self._all_told = asyncio.Event()
        return self._answer

    async def tell(self, session: ServerSession) -> None:
        """Op.TLS_AUTO to `session`'s server, as leader or as a follower of the env's leader. The
        leader holds its order until every follower is told: the CA's validation may reach any."""
        t, answer = self.target, self._leader_answer()
        if session.server == t.leader:
            hold = self._followers > 0
            try:
                answer.set_result(await session.agent.tls_auto(t.app, t.env, {**self.settings, "hold": hold}))
            except BaseException as err:
                answer.set_exception(err if isinstance(err, Exception) else TakoError("cancelled"))
                answer.exception()  # retrieved: an env without followers must not log it as lost
                raise
            if hold:
                assert self._all_told is not None
                await self._all_told.wait()  # a follower that fails fails the deploy: this is cancelled
                await session.agent.tls_auto(t.app, t.env, self.settings)
            return
        try:
            given = await asyncio.shield(answer)
        except TakoError:
            return  # the leader's own failure is the one reported
        leader = {
            "host": t.leader.host,
            "http_port": t.leader.http_port,
            "https_port": t.leader.https_port,
            "token": given.token,
            "pin": given.pin,
        }
        await session.agent.tls_auto(t.app, t.env, {**self.settings, "leader": leader})
        self._told += 1
        if self._told == self._followers and self._all_told is not None:
            self._all_told.set()


async def report(
    sessions: Sequence[ServerSession], target: ResolvedEnv, sink: EventSink, wait: float
) -> None:
    """Wait up to `wait` seconds for every server to serve a certificate for the env's names, then
    say which one each serves, or why it has none yet (a warning, never a failure)."""
    deadline = time.monotonic() + wait
    leader = next(s for s in sessions if s.server == target.leader)
    status = await _leader_issued(leader, target, deadline)
    results: dict[str, CertificateInfo | str] = {}
    error = "the certificate is still pending"
    if status is not None and status.auto_tls is not None and status.auto_tls.last_error:
        error = status.auto_tls.last_error
    if status is None or status.certificate is None or _pending(status):
        results = dict.fromkeys((s.name for s in sessions), error)
    else:
        results[leader.name] = status.certificate
        followers = [s for s in sessions if s is not leader]
        fetched = await asyncio.gather(*(_fetch(s, target, deadline) for s in followers))
        results.update(zip((s.name for s in followers), fetched, strict=True))
    names = ", ".join(target.routes)
    for server, result in results.items():
        if isinstance(result, str):
            message = f"HTTPS: no certificate yet for {names}: {result} (the agent keeps retrying)"
            sink(Notice(server=server, level="warning", message=message))
        else:
            expires = time.strftime("%Y-%m-%d", time.gmtime(result.not_after))
            message = f"HTTPS: certificate for {names} from {result.issuer}, expires {expires}"
            sink(Notice(server=server, message=message))


def _pending(status: AppStatus) -> bool:
    return status.auto_tls is None or status.auto_tls.state != "issued"


async def _leader_issued(leader: ServerSession, target: ResolvedEnv, deadline: float) -> AppStatus | None:
    """The leader's status once it serves a certificate for the names or its attempt failed, or the
    last one seen by the deadline."""
    status = None
    while True:
        try:
            found = [s for s in await leader.agent.status() if (s.app, s.env) == (target.app, target.env)]
        except (TakoError, OSError):
            return status
        status = found[0] if found else None
        # A failed first attempt is retried in a minute at the soonest: no use waiting for it here.
        failed = status is not None and status.auto_tls is not None and bool(status.auto_tls.last_error)
        if (status is not None and (not _pending(status) or failed)) or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(STATUS_POLL)


async def _fetch(session: ServerSession, target: ResolvedEnv, deadline: float) -> CertificateInfo | str:
    try:
        return await asyncio.wait_for(
            session.agent.tls_renew(target.app, target.env), max(deadline - time.monotonic(), 1.0)
        )
    except TimeoutError:
        return "the leader's certificate did not arrive in time"
    except (TakoError, OSError) as err:
        return str(err)


async def renew(target: ResolvedEnv) -> list[tuple[str, CertificateInfo | str]]:
    """`tako tls renew`: the leader orders a new certificate now, then every follower fetches it;
    per server the certificate it serves after that, or what went wrong."""
    leader, followers = target.leader, [s for s in target.servers if s != target.leader]
    first = await _renew_on(target, leader)
    if isinstance(first, str):
        skipped = f"not asked: the leader {leader.name} has no new certificate"
        return [(leader.name, first), *((s.name, skipped) for s in followers)]
    rest = await asyncio.gather(*(_renew_on(target, s) for s in followers))
    return [(leader.name, first), *zip((s.name for s in followers), rest, strict=True)]


async def _renew_on(target: ResolvedEnv, server: Server) -> CertificateInfo | str:
    try:
        async with Connection.open(server) as conn:
            agent = await conn.agent()
            try:
                return await agent.tls_renew(target.app, target.env)
            finally:
                await agent.close()
    except TakoError as err:
        return err.message
