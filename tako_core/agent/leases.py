"""One deploy per app/env at a time: leases with a holder, a build, a start time and a ttl.

A holder that stops renewing loses its lease when the ttl runs out; anyone may then take it. A live
lease can be broken on purpose with `force` (the client's `--force-unlock`). Leases are kept in a
file (ROOT/run/leases.json), so a restarted agent still knows who is deploying.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent.contract import BAD_REQUEST, LEASE_HELD, LEASE_NOT_HELD, LeaseInfo, ProtocolError
from tako_core.agent.layout import write_private

log = logging.getLogger("tako.agent")

MAX_HOLDER = 200  # characters: user@host (deploy id) fits; the holder is stored and shown to others


@dataclass
class Lease:
    info: LeaseInfo  # what clients see (started_at is wall clock, for people)
    renewed: float  # wall clock of the latest acquire or renew

    def expired(self, now: float) -> bool:
        return now - self.renewed > self.info.ttl


class Leases:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._leases: dict[tuple[str, str], Lease] = {}
        try:
            for entry in json.loads(path.read_text()):
                key = (entry["app"], entry["env"])
                self._leases[key] = Lease(LeaseInfo.from_wire(entry), entry["renewed"])
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError, ProtocolError) as e:
            log.error("ignoring unreadable %s: %s", path, type(e).__name__)

    def _save(self) -> None:
        now = time.time()
        live = [
            {"app": a, "env": e, **v.info.to_wire(), "renewed": v.renewed}
            for (a, e), v in self._leases.items()
            if not v.expired(now)
        ]
        write_private(self._path, json.dumps(live).encode())

    def acquire(self, app: str, env: str, holder: str, build: str, ttl: float, force: bool) -> Lease:
        if len(holder) > MAX_HOLDER or not holder.isprintable():
            raise ProtocolError(
                BAD_REQUEST,
                f"the lease holder must be printable and at most {MAX_HOLDER} characters",
                hint="name the deploy's user and host, e.g. alice@laptop",
            )
        now = time.time()
        current = self._leases.get((app, env))
        if current and current.info.holder != holder and not current.expired(now) and not force:
            held = current.info
            raise ProtocolError(
                LEASE_HELD,
                f"{app}/{env} is being deployed by {held.holder} (build {held.build}, "
                f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(held.started_at))})",
                hint="wait for that deploy to finish, or break a stale lease with --force-unlock",
                **held.to_wire(),
            )
        lease = Lease(LeaseInfo(holder=holder, build=build, started_at=now, ttl=ttl), renewed=now)
        self._leases[(app, env)] = lease
        self._save()
        return lease

    def _held(self, app: str, env: str, holder: str) -> Lease:
        lease = self._leases.get((app, env))
        if lease is None or lease.info.holder != holder or lease.expired(time.time()):
            raise ProtocolError(
                LEASE_NOT_HELD,
                f"{holder} does not hold the lease on {app}/{env}",
                hint="the lease expired or was broken; start the deploy again",
            )
        return lease

    def renew(self, app: str, env: str, holder: str) -> None:
        self._held(app, env, holder).renewed = time.time()
        self._save()

    def release(self, app: str, env: str, holder: str) -> None:
        lease = self._leases.get((app, env))
        if lease is not None and lease.info.holder == holder:
            del self._leases[(app, env)]
            self._save()

    def held(self) -> list[tuple[str, str]]:
        """The app/envs someone is deploying now (expired leases left out)."""
        now = time.time()
        return [key for key, lease in self._leases.items() if not lease.expired(now)]

    def get(self, app: str, env: str) -> Lease | None:
        lease = self._leases.get((app, env))
        return lease if lease and not lease.expired(time.time()) else None
