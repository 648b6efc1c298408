"""One deploy per app/env at a time: leases with a holder, a build, a start time and a ttl.

A holder that stops renewing loses its lease when the ttl runs out; anyone may then take it. A live
lease can be broken on purpose with `force` (the client's `--force-unlock`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from tako_core.agent.protocol import LEASE_HELD, LEASE_NOT_HELD, ProtocolError


@dataclass
class Lease:
    holder: str
    build: str
    started_at: float  # wall clock, for people
    ttl: float
    renewed: float  # monotonic, for expiry

    def expired(self, now: float) -> bool:
        return now - self.renewed > self.ttl

    def describe(self) -> dict[str, object]:
        info = asdict(self)
        del info["renewed"]
        return info


class Leases:
    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], Lease] = {}

    def acquire(self, app: str, env: str, holder: str, build: str, ttl: float, force: bool) -> Lease:
        now = time.monotonic()
        key = (app, env)
        current = self._leases.get(key)
        if current and current.holder != holder and not current.expired(now) and not force:
            raise ProtocolError(
                LEASE_HELD,
                f"{app}/{env} is being deployed by {current.holder} (build {current.build}, "
                f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(current.started_at))})",
                hint="wait for that deploy to finish, or break a stale lease with --force-unlock",
                **current.describe(),
            )
        lease = Lease(holder, build, time.time(), ttl, now)
        self._leases[key] = lease
        return lease

    def _held(self, app: str, env: str, holder: str) -> Lease:
        lease = self._leases.get((app, env))
        if lease is None or lease.holder != holder or lease.expired(time.monotonic()):
            raise ProtocolError(
                LEASE_NOT_HELD,
                f"{holder} does not hold the lease on {app}/{env}",
                hint="the lease expired or was broken; start the deploy again",
            )
        return lease

    def renew(self, app: str, env: str, holder: str) -> None:
        self._held(app, env, holder).renewed = time.monotonic()

    def release(self, app: str, env: str, holder: str) -> None:
        lease = self._leases.get((app, env))
        if lease is not None and lease.holder == holder:
            del self._leases[(app, env)]

    def get(self, app: str, env: str) -> Lease | None:
        lease = self._leases.get((app, env))
        return lease if lease and not lease.expired(time.monotonic()) else None
