"""Automatic certificates (`tls = "auto"`): one ACME order per env, by its leader; followers get the
certificate from the leader.

Design (issue #12). The deploy sends every server of an auto env Op.TLS_AUTO: the env's DNS names,
the ACME settings (directory, contact, the CA bundle's PEM) and the server's role. Each server keeps
these in ROOT/acme/<app>/<env>/auto.json (0600), so what follows runs on across agent restarts and
without any client; one task per env does it. The leader is told first, with `hold`: it orders
nothing until the followers have their settings and it is told again (at most HOLD_MAX), since the
CA's validation may reach any of them.

- The leader orders. When it serves no certificate of its own key for exactly these names, or
  renewal is due (acme_renewal: a third of the lifetime left, or the CA's ARI window), it calls
  `acme.obtain` in a thread, its challenges published in `Router.challenges`, and installs the chain
  (`Certs.install`: new handshakes get it, open connections keep theirs). A failure is retried after
  `acme_renewal.after_failure` (exponential, never sooner than the CA's Retry-After); the last error
  shows in status. The certificate's key is made once per env (key.pem) and reused by every renewal:
  its pin (sha256 of the DER SubjectPublicKeyInfo) is how followers recognise the leader. The ACME
  account key is ROOT/acme/account.key. The leader also makes a sync token once per env (token,
  0600); Op.TLS_AUTO returns the token and the pin to the client, which passes both to the followers.
- Followers forward and fetch. The CA's validation request may reach any server (DNS): a follower's
  router asks the leader for a token it does not hold (`GET http://leader:http_port/.well-known/
  acme-challenge/<token>`, short timeout, bounded size) and answers with that. A follower fetches the
  certificate from `https://leader:https_port/.well-known/tako/certificate` (SNI: one of the names,
  `Authorization: Bearer <token>`), checking the key the leader presents against the pin BEFORE it
  sends the token (no CA trust needed; a man in the middle gets nothing), and installs the chain and
  key when they differ from its own and expire no sooner. It polls soon after TLS_AUTO, backs off
  while the leader has none, then every FOLLOW_POLL. The leader answers that path on HTTPS only,
  comparing the token in constant time, with a 404 for anything else; it is never proxied to apps.
- Op.TLS_RENEW makes a leader order now and a follower fetch now; both answer once that is done.
- Mode off or a brought certificate (Op.CERT_REMOVE, Op.CERT_INSTALL) stops the env's task.

Blocking work (openssl, the ACME exchange) runs in daemon threads: an issuance under way (bounded by
obtain's timeout) must never hold up the agent's stop or restart in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from tako_core.agent import acme_renewal
from tako_core.agent.acme import AcmeClient, AcmeProblem, obtain
from tako_core.agent.acme_crypto import (
    AccountKey,
    AcmeError,
    cert_info,
    key_pin,
    load_or_create_key,
)
from tako_core.agent.certs import Certs
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.contract import (
    BAD_REQUEST,
    AutoTlsStatus,
    CertificateInfo,
    ProtocolError,
    TlsAutoSet,
)
from tako_core.agent.layout import check_name, write_private
from tako_core.agent.leader_link import LeaderRef, SyncError, fetch_certificate, fetch_challenge
from tako_core.agent.params import Params
from tako_core.agent.router import Router

log = logging.getLogger("tako.agent")

FOLLOW_POLL = 3 * 3600.0  # a follower with the leader's certificate looks again this often
FOLLOW_FIRST = 1.0  # the first retry while the leader has none; doubled up to FOLLOW_CAP
FOLLOW_CAP = 300.0
HOLD_MAX = 120.0  # the longest a leader waits for the deploy to tell its followers
ERROR_CHARS = 500
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_PIN = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


@dataclass(frozen=True)
class AutoParams:
    names: tuple[str, ...]
    directory: str
    email: str | None
    ca_pem: str | None
    leader: LeaderRef | None  # None: this server is the leader

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AutoParams:
        doc = json.loads(data)
        leader = doc.get("leader")
        return cls(
            names=tuple(doc["names"]),
            directory=doc["directory"],
            email=doc.get("email"),
            ca_pem=doc.get("ca_pem"),
            leader=LeaderRef(**leader) if leader else None,
        )


@dataclass
class _Env:
    key: str
    folder: Path
    params: AutoParams
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    force: bool = False  # a leader orders at its next attempt, due or not
    hold_until: float = 0.0  # a leader orders nothing before (epoch s): its followers are being told
    failures: int = 0
    last_error: str | None = None
    next_attempt: float | None = None
    waiters: list[asyncio.Future[CertificateInfo]] = field(default_factory=list)
    # Those asked before the attempt under way began: it answers them (a later ask gets a later one).
    answering: list[asyncio.Future[CertificateInfo]] = field(default_factory=list)


async def in_thread(work: Callable[[], T]) -> T:
    """`work()` in a daemon thread: unlike asyncio.to_thread's pool, nothing waits for it at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as err:  # handed to the awaiting task
            error = err
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the agent stopped)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, daemon=True, name="tako-autocerts").start()
    return await future


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "…"


class AutoCerts:
    """The automatic certificates of every auto env on this server (their state under `root`)."""

    def __init__(self, root: Path, certs: Certs, router: Router) -> None:
        self.root = root
        self.certs = certs
        self.router = router
        self._envs: dict[str, _Env] = {}
        router.forward_challenge = self.forward_challenge
        router.certificate_sync = self.sync_answer

    def _folder(self, key: str) -> Path:
        app, _, env = key.partition("/")
        return self.root / check_name("app", app) / check_name("env", env)

    def restore(self) -> None:
        """Start every env kept in ROOT/acme (after an agent restart)."""
        for saved in sorted(self.root.glob("*/*/auto.json")):
            key = f"{saved.parent.parent.name}/{saved.parent.name}"
            try:
                self._start(key, AutoParams.from_json(saved.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError, ProtocolError) as err:
                log.error("tls auto: cannot restore %s: %s", key, err)

    async def configure(self, key: str, params: AutoParams, *, hold: bool = False) -> TlsAutoSet:
        """Keep `params` for `key` and run its task; a leader answers its token and pin. `hold`: the
        leader orders nothing until told again without it (or HOLD_MAX passed): its followers are
        being told, and the CA's validation may reach any of them."""
        folder = self._folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        for d in (self.root, folder.parent, folder):
            d.chmod(0o700)
        answer = TlsAutoSet()
        if params.leader is None:
            key_pem = await in_thread(lambda: load_or_create_key(folder / "key.pem"))
            token = await in_thread(lambda: _token(folder / "token"))
            answer = TlsAutoSet(token=token, pin=await in_thread(lambda: key_pin(key_pem)))
        write_private(folder / "auto.json", params.to_json())
        self._start(key, params, hold_until=time.time() + HOLD_MAX if hold else 0.0)
        return answer

    def _start(self, key: str, params: AutoParams, hold_until: float = 0.0) -> None:
        env = self._envs.get(key)
        if env is None:
            env = self._envs[key] = _Env(key, self._folder(key), params)
        elif env.params != params:
            env.params, env.failures, env.last_error = params, 0, None
        env.hold_until = hold_until
        env.wake.set()
        if env.task is None or env.task.done():
            env.task = asyncio.get_running_loop().create_task(self._run(env), name=f"tls-auto-{key}")

    async def stop(self, key: str) -> None:
        """Stop `key`'s task and forget its settings (its certificate is the caller's business)."""
        env = self._envs.pop(key, None)
        if env is not None and env.task is not None:
            env.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await env.task
            for waiter in (*env.answering, *env.waiters):  # a `tls renew` under way gets its answer
                if not waiter.done():
                    waiter.set_exception(SyncError("the env's automatic certificate was turned off"))
        folder = self._folder(key)
        (folder / "auto.json").unlink(missing_ok=True)
        if folder.exists() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)

    async def shutdown(self) -> None:
        tasks = [env.task for env in self._envs.values() if env.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def renew(self, key: str) -> CertificateInfo:
        """A leader orders now, a follower fetches now; the certificate it serves after that."""
        env = self._envs.get(key)
        if env is None:
            raise KeyError(key)
        waiter: asyncio.Future[CertificateInfo] = asyncio.get_running_loop().create_future()
        env.waiters.append(waiter)
        env.force = True
        env.wake.set()
        return await waiter

    def status(self, key: str) -> AutoTlsStatus | None:
        env = self._envs.get(key)
        if env is None:
            return None
        p = env.params
        info = self.certs.get(key)
        issued = info is not None and set(info.names) == set(p.names)
        return AutoTlsStatus(
            role="leader" if p.leader is None else "follower",
            names=p.names,
            state="issued" if issued else "pending",
            leader=None if p.leader is None else f"{p.leader.host}:{p.leader.https_port}",
            last_error=env.last_error,
            next_attempt=env.next_attempt,
        )

    # -- the task ------------------------------------------------------------------------------------

    async def _run(self, env: _Env) -> None:
        while True:
            env.wake.clear()
            held = env.hold_until - time.time() if env.params.leader is None else 0.0
            if held > 0:
                with contextlib.suppress(WaitTimeout):
                    await asyncio.wait_for(env.wake.wait(), held)
                continue
            env.answering, env.waiters = env.waiters, []
            forced, env.force = env.force, False
            try:
                wait = await (self._lead(env, forced) if env.params.leader is None else self._follow(env))
            except Exception as err:  # a bug must cost a retry, never the env's task
                log.exception("tls auto: %s failed unexpectedly", env.key)
                wait = self._failed(env, err, acme_renewal.after_failure(time.time(), env.failures + 1))
            env.next_attempt = time.time() + wait
            with contextlib.suppress(WaitTimeout):
                await asyncio.wait_for(env.wake.wait(), wait)

    def _failed(self, env: _Env, err: BaseException, retry_at: float) -> float:
        env.failures += 1
        env.last_error = _short(err)
        waiters, env.answering = env.answering, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(SyncError(env.last_error))
        return max(retry_at - time.time(), 0.0)

    def _succeeded(self, env: _Env, info: CertificateInfo) -> None:
        env.failures, env.last_error = 0, None
        waiters, env.answering = env.answering, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(info)

    async def _lead(self, env: _Env, forced: bool) -> float:
        """Order when needed; seconds until the next look."""
        p, now = env.params, time.time()
        key_pem = await in_thread(lambda: load_or_create_key(env.folder / "key.pem"))
        pair = self.certs.pair(env.key)
        info = self.certs.get(env.key)
        ours = pair is not None and pair[1].encode() == key_pem
        if not forced and ours and info is not None and set(info.names) == set(p.names):
            assert pair is not None
            due = await in_thread(lambda: self._next_look(env, pair[0].encode(), now))
            if due > now:
                self._succeeded(env, info)
                return due - now
        try:
            chain = await in_thread(lambda: self._obtain(env, key_pem))
            info = await in_thread(lambda: self.certs.install(env.key, chain, key_pem.decode()))
        except AcmeError as err:
            log.warning("tls auto: %s: no certificate for %s: %s", env.key, ", ".join(p.names), err)
            retry = err.retry_after if isinstance(err, AcmeProblem) else None
            return self._failed(env, err, acme_renewal.after_failure(now, env.failures + 1, retry))
        except ProtocolError as err:  # the CA's chain does not load with our key
            return self._failed(env, err, acme_renewal.after_failure(now, env.failures + 1))
        self._succeeded(env, info)
        due = await in_thread(lambda: self._next_look(env, chain.encode(), time.time()))
        # Never straight into another order, whatever a CA's renewal window says of a new certificate.
        return max(due - time.time(), acme_renewal.ARI_CHECK_MIN)

    def _obtain(self, env: _Env, key_pem: bytes) -> str:
        p = env.params
        bundle = self._bundle(env)
        challenges = self.router.challenges
        return obtain(
            p.directory,
            account_key=self.root / "account.key",
            email=p.email,
            names=p.names,
            cert_key_pem=key_pem,
            ca_bundle=bundle,
            publish=challenges.__setitem__,
            withdraw=lambda token: _drop(challenges, token),
            log=lambda message: log.info("tls auto: %s: %s", env.key, message),
        )

    def _bundle(self, env: _Env) -> Path | None:
        if env.params.ca_pem is None:
            return None
        path = env.folder / "ca.pem"
        write_private(path, env.params.ca_pem.encode())
        return path

    def _next_look(self, env: _Env, chain: bytes, now: float) -> float:
        """When to renew (ARI when the CA offers it), or to ask the CA's renewal window again."""
        info = cert_info(chain)
        window, check = None, None
        try:
            key = AccountKey.from_pem(load_or_create_key(self.root / "account.key"))
            found = AcmeClient(env.params.directory, key, self._bundle(env)).renewal_info(chain)
        except (AcmeError, OSError):
            found = None  # no ARI, or the CA is unreachable now: the lifetime decides
        if found is not None:
            window = found[0]
            check = acme_renewal.next_ari_check(now, found[1])
        due = acme_renewal.renew_at(info, window, random.random())
        return min(due, check) if check is not None else due

    # -- followers -------------------------------------------------------------------------------------

    async def _follow(self, env: _Env) -> float:
        p = env.params
        assert p.leader is not None
        soon = time.time() + min(FOLLOW_FIRST * 2**env.failures, FOLLOW_CAP)  # while the leader has none
        try:
            pair = await fetch_certificate(p.leader, p.names[0])
        except SyncError as err:
            log.info("tls auto: %s: no certificate from the leader yet: %s", env.key, err)
            return self._failed(env, err, soon)
        if await in_thread(lambda: self._takes(env.key, pair)):
            try:
                await in_thread(lambda: self.certs.install(env.key, pair[0], pair[1]))
            except ProtocolError as err:
                return self._failed(env, err, time.time() + FOLLOW_CAP)
        info = self.certs.get(env.key)
        if info is None or set(info.names) != set(p.names):
            # The leader is still ordering for these names.
            return self._failed(env, SyncError("the leader has no certificate for these names yet"), soon)
        self._succeeded(env, info)
        return FOLLOW_POLL

    def _takes(self, key: str, pair: tuple[str, str]) -> bool:
        """Whether the leader's pair replaces this server's: one of another key (a brought
        certificate, an older leader's) always, one of the same key when it expires no sooner."""
        own = self.certs.pair(key)
        if own == pair:
            return False
        own_info = self.certs.get(key)
        if own is None or own_info is None or own[1] != pair[1]:
            return True
        return cert_info(pair[0].encode()).not_after >= own_info.not_after

    async def forward_challenge(self, token: str, host: str) -> str | None:
        """A follower's answer for a token it does not hold: what the env's leader answers."""
        leader = next(
            (e.params.leader for e in self._envs.values() if e.params.leader and host in e.params.names), None
        )
        if leader is None or not _TOKEN.fullmatch(token):
            return None
        try:
            return await fetch_challenge(leader, token, host)
        except SyncError as err:
            log.warning("tls auto: cannot forward an ACME challenge for %s to the leader: %s", host, err)
            return None

    def sync_answer(self, host: str, authorization: bytes) -> bytes | None:
        """The leader's certificate for a follower that shows the env's token; None: 404."""
        for env in self._envs.values():
            if env.params.leader is not None or host not in env.params.names:
                continue
            try:
                token = (env.folder / "token").read_bytes().strip()
            except OSError:
                return None
            if not hmac.compare_digest(authorization, b"Bearer " + token):
                return None
            pair = self.certs.pair(env.key)
            if pair is None:
                return None
            return json.dumps({"chain": pair[0], "key": pair[1]}).encode()
        return None


def params_from(p: Params) -> AutoParams:
    """Op.TLS_AUTO's parameters: names, directory, email, ca_pem, and for a follower `leader`
    (host, http_port, https_port, token, pin)."""
    names = p.hosts("names")
    if not names or any(n.startswith("*.") for n in names):
        raise ProtocolError(BAD_REQUEST, "automatic certificates need DNS names, no wildcard")
    directory = p.str("directory")
    if not directory.startswith("https://"):
        raise ProtocolError(BAD_REQUEST, "the ACME directory must be an https:// URL")
    given = p.opt_mapping("leader")
    leader = None
    if given is not None:
        lp = Params(given)
        leader = LeaderRef(
            host=lp.str("host"),
            http_port=lp.int("http_port", 80, 1, 65535),
            https_port=lp.int("https_port", 443, 1, 65535),
            token=lp.str("token"),
            pin=lp.str("pin"),
        )
        if not _TOKEN.fullmatch(leader.token) or not _PIN.fullmatch(leader.pin):
            raise ProtocolError(BAD_REQUEST, "the leader's token or pin is malformed")
    names = [n.lower() for n in names]
    return AutoParams(tuple(names), directory, p.opt_str("email"), p.opt_str("ca_pem"), leader)


def _drop(challenges: dict[str, str], token: str) -> None:
    challenges.pop(token, None)


def _token(path: Path) -> str:
    """The env's sync token, made once (0600)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        write_private(path, token.encode())
        return token
