"""When the agent renews a certificate: pure functions over epoch seconds, no I/O.

- Without ARI: when a third of the lifetime is left (`due_at`), as Let's Encrypt recommends.
- With ACME Renewal Information (RFC 9773), when the directory has `renewalInfo`: the CA's
  suggested window for the certificate (`ari_cert_id` names it) decides; the renewal time is a uniform
  random point in it (`pick_in_window`: the CA spreads load; a point in the past means now), and the
  window is fetched again after the response's Retry-After, clamped to [1 minute, 1 day]
  (`next_ari_check`). A window the CA revises early (e.g. a revocation) thus takes effect within a day.
- After a failed attempt: exponential backoff from a minute, capped at 6 hours, never sooner than a
  CA's Retry-After (`after_failure`), so rate limits are not hammered.

`acme.AcmeClient.renewal_info` fetches the window; the agent's loop (the lead) sleeps until
`min(renew_at, next check)` and keeps the failure count per env.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass

from tako_core.agent.acme_crypto import AcmeError, CertInfo, b64url

ARI_CHECK_DEFAULT = 6 * 3600.0
ARI_CHECK_MIN = 60.0
ARI_CHECK_MAX = 86400.0
BACKOFF_FIRST = 60.0
BACKOFF_CAP = 6 * 3600.0
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def due_at(not_before: float, not_after: float) -> float:
    """A third of the lifetime before expiry."""
    return not_after - (not_after - not_before) / 3


def ari_cert_id(info: CertInfo) -> str:
    """RFC 9773's certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial DER)."""
    if not info.authority_key_id:
        raise AcmeError("the certificate has no Authority Key Identifier: ARI cannot name it")
    return f"{b64url(info.authority_key_id)}.{b64url(info.serial)}"


@dataclass(frozen=True)
class RenewalWindow:
    start: float
    end: float
    explanation_url: str | None


def parse_renewal_info(body: bytes) -> RenewalWindow:
    """A renewalInfo response: `{"suggestedWindow": {"start": ..., "end": ...}, "explanationURL"}`."""
    try:
        doc = json.loads(body)
        window = doc["suggestedWindow"]
        start, end = rfc3339(window["start"]), rfc3339(window["end"])
    except (ValueError, KeyError, TypeError) as err:
        raise AcmeError(f"the CA's renewal information is malformed: {err}") from err
    if end <= start:
        # RFC 9773 4.2: a window that ends before it starts is invalid and must be ignored.
        raise AcmeError("the CA's suggested renewal window ends before it starts")
    explanation = doc.get("explanationURL")
    return RenewalWindow(start, end, explanation if isinstance(explanation, str) else None)


def rfc3339(text: object) -> float:
    """RFC 3339 date-time -> epoch seconds (Python 3.10's fromisoformat rejects `Z`)."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    seconds = float(calendar.timegm((year, month, day, hour, minute, second)))
    seconds += float(match.group(7) or 0.0)
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    return seconds


def pick_in_window(window: RenewalWindow, rand: float) -> float:
    """The renewal time for a uniform `rand` in [0, 1) (the caller's random.random())."""
    return window.start + rand * (window.end - window.start)


def renew_at(info: CertInfo, window: RenewalWindow | None, rand: float) -> float:
    """When to renew: in the CA's window when there is one, else at a third of the lifetime left."""
    return pick_in_window(window, rand) if window else due_at(info.not_before, info.not_after)


def next_ari_check(now: float, retry_after: float | None) -> float:
    """When to fetch the renewal information again."""
    wait = ARI_CHECK_DEFAULT if retry_after is None else retry_after
    return now + min(max(wait, ARI_CHECK_MIN), ARI_CHECK_MAX)


def after_failure(now: float, failures: int, retry_after: float | None = None) -> float:
    """When to try again after the `failures`-th failure in a row (1 = the first)."""
    backoff = min(BACKOFF_FIRST * 2.0 ** min(max(failures - 1, 0), 30), BACKOFF_CAP)
    return now + max(backoff, retry_after or 0.0)
