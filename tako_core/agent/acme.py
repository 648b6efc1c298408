"""An ACME client (RFC 8555) for HTTP-01: one call, `obtain`, from a directory URL to a PEM chain.

Design. Blocking and small on purpose: the agent calls `obtain` through `asyncio.to_thread`, once per
env and renewal. Every HTTP exchange is one `http.client` request with a timeout (a fresh TLS
connection each: an issuance is ~15 requests), trusting the system's CAs or `ca_bundle`. Crypto is the
`openssl` command (acme_crypto). Every loop is bounded in count and in time (`timeout`, default 5
minutes for the whole issuance). What real CAs do and this client copes with:
- the `Replay-Nonce` of every response is kept for the next request; a `badNonce` problem is retried
  with the nonce it came with (up to BAD_NONCE_RETRIES times: Pebble rejects 5% of good nonces);
- authorizations already valid (reused by the CA) need no challenge; pending ones are answered by
  HTTP-01 only; orders and authorizations are polled through pending/processing with the CA's
  `Retry-After` honoured (clamped to what is left of `timeout`);
- every other problem document becomes an `AcmeProblem` naming its type, detail, subproblems and
  Retry-After (a `rateLimited` says when to come back); an invalid authorization reports the
  challenge's own error as the CA gave it ("... connection refused" and the like).
- `newAccount` with a known key returns the existing account (200), so the account key file is the
  account: no `onlyReturnExisting` round trip.

What the agent must wire (the lead): `publish(token, key_authorization)` puts the answer in the
router's challenge table, so `GET /.well-known/acme-challenge/<token>` on the HTTP port answers it on
every server (followers forward unknown tokens to the leader), `withdraw(token)` removes it (called
for every published token, also on failure). The account key lives in the agent's state directory
(0600, made on first use by `load_or_create_key`), the certificate key likewise. One order per env
and renewal: only the env's leader calls `obtain`, then hands the chain to the others; when to call
it again is acme_renewal's business.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

from tako_core.agent.acme_crypto import (
    AccountKey,
    AcmeError,
    b64url,
    cert_info,
    csr,
    load_or_create_key,
)
from tako_core.agent.acme_renewal import RenewalWindow, ari_cert_id, parse_renewal_info

HTTP_TIMEOUT = 30.0
MAX_BODY = 1 << 20
BAD_NONCE_RETRIES = 20
MAX_POLLS = 100
MAX_POLL_WAIT = 60.0
PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,256}")  # base64url, at least 128 bits (RFC 8555 8.3)


class AcmeProblem(AcmeError):
    """A problem document (RFC 7807) from the CA."""

    def __init__(self, url: str, problem: Mapping[str, object], retry_after: float | None) -> None:
        self.type = str(problem.get("type", "about:blank"))
        self.detail = str(problem.get("detail", ""))
        self.retry_after = retry_after
        message = f"the ACME server refused {url}: {self.type}: {self.detail}"
        subproblems = problem.get("subproblems")
        if isinstance(subproblems, list):
            for sub in subproblems:
                if isinstance(sub, dict):
                    ident = sub.get("identifier")
                    who = ident.get("value", "?") if isinstance(ident, dict) else "?"
                    message += f"; {who}: {sub.get('type', '')}: {sub.get('detail', '')}"
        if retry_after is not None:
            message += f" (retry after {retry_after:.0f} s)"
        super().__init__(message)


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> dict[str, object]:
        try:
            value = json.loads(self.body)
        except ValueError as err:
            raise AcmeError(f"the ACME server sent invalid JSON (HTTP {self.status})") from err
        if not isinstance(value, dict):
            raise AcmeError(f"the ACME server sent JSON that is not an object (HTTP {self.status})")
        return value


def retry_after(headers: dict[str, str], now: float) -> float | None:
    """Seconds from `now` that a `Retry-After` header asks for (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass
class AcmeClient:
    """One account's conversation with one CA (nonces, the account URL)."""

    directory_url: str
    key: AccountKey
    ca_bundle: Path | None = None
    log: Callable[[str], None] = lambda _message: None
    _context: ssl.SSLContext = field(init=False, repr=False)
    _directory: dict[str, object] = field(default_factory=dict, init=False, repr=False)
    _nonce: str | None = field(default=None, init=False, repr=False)
    kid: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if urlsplit(self.directory_url).scheme != "https":
            raise AcmeError(f"the ACME directory must be an https:// URL, not {self.directory_url}")
        try:
            self._context = ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as err:
            raise AcmeError(f"cannot read the ACME CA bundle {self.ca_bundle}: {err}") from err

    def request(
        self, method: str, url: str, body: bytes | None = None, accept: str = "application/json"
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise AcmeError(f"the ACME server sent a URL that is not https: {url}")
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=HTTP_TIMEOUT, context=self._context
        )
        headers = {"User-Agent": "tako-agent", "Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/jose+json"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path or "/", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as err:
            raise AcmeError(f"cannot reach the ACME server at {url}: {err}") from err
        finally:
            conn.close()
        if len(data) > MAX_BODY:
            raise AcmeError(f"the ACME server's answer to {url} is over {MAX_BODY} bytes")
        result = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        if "replay-nonce" in result.headers:
            self._nonce = result.headers["replay-nonce"]
        return result

    def offers(self, name: str) -> bool:
        """Whether the directory has `name` (e.g. `renewalInfo`); fetched once."""
        if not self._directory:
            resp = self.request("GET", self.directory_url)
            self._check(self.directory_url, resp)
            self._directory = resp.json()
        return isinstance(self._directory.get(name), str)

    def directory(self, name: str) -> str:
        url = self._directory.get(name) if self.offers(name) else None
        if not isinstance(url, str):
            raise AcmeError(f"the ACME directory {self.directory_url} has no {name}")
        return url

    def post(self, url: str, payload: object | None, accept: str = "application/json") -> Response:
        """A signed POST (payload None: POST-as-GET); `badNonce` retried with the fresh nonce."""
        for _ in range(BAD_NONCE_RETRIES + 1):
            if self._nonce is None:
                self._check(url, self.request("HEAD", self.directory("newNonce")))
            nonce, self._nonce = self._nonce, None
            if nonce is None:
                raise AcmeError("the ACME server gave no Replay-Nonce")
            resp = self.request("POST", url, self.key.jws(url, nonce, payload, self.kid), accept)
            if resp.status < 400 or not _is_bad_nonce(resp):
                self._check(url, resp)
                return resp
            self.log(f"ACME badNonce from {url}: retrying with the nonce it sent")
        raise AcmeError(f"the ACME server rejected {BAD_NONCE_RETRIES + 1} nonces in a row ({url})")

    def _check(self, url: str, resp: Response) -> None:
        if resp.status < 400:
            return
        try:
            problem = resp.json()
        except AcmeError:
            problem = {"type": f"HTTP {resp.status}", "detail": resp.body[:200].decode("replace")}
        raise AcmeProblem(url, problem, retry_after(resp.headers, time.time()))

    def account(self, email: str | None) -> bool:
        """Register (or find, for a known key) the account; True when it was created now."""
        payload: dict[str, object] = {"termsOfServiceAgreed": True}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        resp = self.post(self.directory("newAccount"), payload)
        self.kid = resp.headers.get("location")
        if not self.kid:
            raise AcmeError("the ACME server's newAccount answer has no Location")
        created = resp.status == 201
        self.log(f"ACME account {self.kid} {'created' if created else 'reused'}")
        return created

    def renewal_info(self, cert_pem: bytes) -> tuple[RenewalWindow, float | None] | None:
        """The CA's suggested renewal window (RFC 9773) for `cert_pem` and the response's
        Retry-After; None when the CA does not offer ARI."""
        if not self.offers("renewalInfo"):
            return None
        url = f"{self.directory('renewalInfo').rstrip('/')}/{ari_cert_id(cert_info(cert_pem))}"
        resp = self.request("GET", url)
        self._check(url, resp)
        return parse_renewal_info(resp.body), retry_after(resp.headers, time.time())

    def poll(self, url: str, pending: Sequence[str], deadline: float) -> dict[str, object]:
        """POST-as-GET `url` until its status leaves `pending`, honouring Retry-After."""
        wait = 0.25
        for _ in range(MAX_POLLS):
            resp = self.post(url, None)
            body = resp.json()
            if body.get("status") not in pending:
                return body
            asked = retry_after(resp.headers, time.time())
            wait = min(asked if asked is not None else wait * 2, MAX_POLL_WAIT)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(wait, left))
        raise AcmeError(f"{url} is still {body.get('status')} after the time allowed")

    def authorize(
        self, authz_urls: Sequence[str], publish: Publish, withdraw: Withdraw, deadline: float
    ) -> None:
        """Answer HTTP-01 for every pending authorization and wait for all to be valid."""
        published: list[str] = []
        try:
            pending: list[tuple[str, str]] = []  # (authz url, identifier)
            for url in authz_urls:
                authz = self.post(url, None).json()
                name = _identifier(authz)
                if authz.get("status") == "valid":
                    continue
                challenge = _http01(authz, name)
                token = str(challenge.get("token", ""))
                if not _TOKEN.fullmatch(token):  # it becomes a URL path the router serves
                    raise AcmeError(f"the CA sent an invalid http-01 token for {name}")
                publish(token, f"{token}.{self.key.thumbprint}")
                published.append(token)
                self.post(str(challenge["url"]), {})
                pending.append((url, name))
            for url, name in pending:
                authz = self.poll(url, ("pending",), deadline)
                if authz.get("status") != "valid":
                    raise AcmeError(f"the CA could not validate {name}: {_challenge_error(authz)}")
        finally:
            for token in published:
                withdraw(token)


Publish = Callable[[str, str], None]
Withdraw = Callable[[str], None]


def _is_bad_nonce(resp: Response) -> bool:
    try:
        return resp.json().get("type") == PROBLEM_PREFIX + "badNonce"
    except AcmeError:
        return False


def _identifier(authz: dict[str, object]) -> str:
    ident = authz.get("identifier")
    name = ident.get("value") if isinstance(ident, dict) else None
    wildcard = "*." if authz.get("wildcard") else ""
    return f"{wildcard}{name}"


def _http01(authz: dict[str, object], name: str) -> dict[str, object]:
    challenges = authz.get("challenges")
    for challenge in challenges if isinstance(challenges, list) else []:
        if isinstance(challenge, dict) and challenge.get("type") == "http-01":
            return challenge
    raise AcmeError(f"the CA offers no http-01 challenge for {name} (wildcards need DNS-01)")


def _challenge_error(authz: dict[str, object]) -> str:
    challenges = authz.get("challenges")
    for challenge in challenges if isinstance(challenges, list) else []:
        error = challenge.get("error") if isinstance(challenge, dict) else None
        if isinstance(error, dict):
            return f"{error.get('type', '')}: {error.get('detail', '')}"
    return f"the authorization is {authz.get('status')} and no challenge says why"


def obtain(
    directory: str,
    *,
    account_key: Path,
    email: str | None,
    names: Sequence[str],
    cert_key_pem: bytes,
    ca_bundle: Path | None,
    publish: Publish,
    withdraw: Withdraw,
    timeout: float = 300.0,
    log: Callable[[str], None] = lambda _message: None,
) -> str:
    """A certificate for `names` from the ACME CA at `directory`: the PEM chain (leaf first)."""
    if not names:
        raise AcmeError("a certificate needs at least one name")
    deadline = time.monotonic() + timeout
    client = AcmeClient(directory, AccountKey.from_pem(load_or_create_key(account_key)), ca_bundle, log)
    client.account(email)
    identifiers = [{"type": "dns", "value": name} for name in names]
    resp = client.post(client.directory("newOrder"), {"identifiers": identifiers})
    order_url = resp.headers.get("location")
    if not order_url:
        raise AcmeError("the ACME server's newOrder answer has no Location")
    order = resp.json()
    log(f"ACME order {order_url} for {', '.join(names)}")
    authzs = order.get("authorizations")
    client.authorize(
        [str(a) for a in authzs] if isinstance(authzs, list) else [], publish, withdraw, deadline
    )
    order = client.poll(order_url, ("pending",), deadline)
    if order.get("status") == "ready":
        client.post(str(order.get("finalize")), {"csr": b64url(csr(cert_key_pem, names))})
        order = client.poll(order_url, ("ready", "processing"), deadline)
    if order.get("status") != "valid" or not isinstance(order.get("certificate"), str):
        error = order.get("error")
        why = f": {error.get('type')}: {error.get('detail')}" if isinstance(error, dict) else ""
        raise AcmeError(f"the ACME order {order_url} ended {order.get('status')}{why}")
    chain = client.post(str(order["certificate"]), None, accept="application/pem-certificate-chain")
    text = chain.body.decode("ascii", errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise AcmeError(f"the ACME server's certificate at {order['certificate']} is not PEM")
    log(f"ACME certificate issued for {', '.join(names)}")
    return text
