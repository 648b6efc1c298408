"""The instances of one app/env and their rolling update.

Per instance: start the new one on a free loopback port, wait until its health path answers, switch
the route to it, drain the old one. The drained old instances are stopped only once every new one is
serving, so a failure at any step routes back to old instances that are still running: the old
version keeps serving and the new instances are killed. State (what runs, with which env) is kept in
state.json (0600, it holds secrets) so a restarted agent brings its apps back without the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from typing import Any

from tako_core.agent import health, procs, releases
from tako_core.agent.contract import BUSY, FAILED, NOT_FOUND, ProtocolError
from tako_core.agent.instances import STOP_GRACE, Instance, InstanceSpec
from tako_core.agent.layout import AppLayout, write_private
from tako_core.agent.logs import OutputLog
from tako_core.agent.procs import child_env
from tako_core.agent.router import Router
from tako_core.mask import Masker

HEALTH_TIMEOUT = 30.0
HEALTH_INTERVAL = 0.1
HEALTH_FAST_INTERVAL = 0.01  # while a new instance boots (its first HEALTH_FAST_FOR seconds)
HEALTH_FAST_FOR = 5.0
DRAIN_TIMEOUT = 30.0

log = logging.getLogger("tako.agent")


@dataclass(kw_only=True)
class AppState:
    """What an app/env runs; persisted so the agent can restart it on its own."""

    build: str
    start: str
    instances: int
    health_path: str
    routes: list[str]
    vars: dict[str, str]  # [vars] of tako.toml; the name is the key in state.json files out there
    secrets: dict[str, str]
    previous: str | None = None  # the release `current` pointed at before the latest finalize


class AppRuntime:
    def __init__(self, app: str, env: str, layout: AppLayout, router: Router) -> None:
        self.app = app
        self.env = env
        self.layout = layout
        self.router = router
        self.key = f"{app}/{env}"
        self._lock = asyncio.Lock()
        self._prepare: tuple[str, asyncio.Task[None]] | None = None
        self._prepare_stopped = False  # set by stop_preparing: that cancellation is a cleanup's
        self.instances: list[Instance] = []
        self.output = OutputLog(layout.instance_log)
        self.state: AppState | None = self._load_state()

    @contextlib.asynccontextmanager
    async def exclusive(self, what: str, *, wait: bool = False) -> AsyncIterator[None]:
        """One change (prepare, rollout, finalize, ...) at a time; a second one is refused, not queued:
        queued behind a rollout it would act on a state its sender never saw. Only a cleanup, which
        never touches what is current or running, may `wait` its turn."""
        if self._lock.locked() and not wait:
            raise ProtocolError(
                BUSY, f"{self.key} is busy; {what} refused", hint="retry when it has finished"
            )
        async with self._lock:
            yield

    async def preparing(self, build: str, work: Coroutine[Any, Any, None]) -> None:
        """Run a prepare of `build` that `stop_preparing` can stop."""
        task = asyncio.ensure_future(work)
        self._prepare = (build, task)
        try:
            await task
        except asyncio.CancelledError:
            if not self._prepare_stopped:
                raise  # the agent itself is stopping
            raise ProtocolError(FAILED, f"the prepare of {build} was stopped by a cleanup") from None
        finally:
            self._prepare = None
            self._prepare_stopped = False

    async def stop_preparing(self, build: str) -> None:
        if self._prepare is not None and self._prepare[0] == build:
            task = self._prepare[1]
            self._prepare_stopped = True
            task.cancel()
            await asyncio.wait([task])

    def _load_state(self) -> AppState | None:
        try:
            data = json.loads(self.layout.state.read_text())
            return AppState(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            log.error("ignoring unreadable %s: %s", self.layout.state, type(e).__name__)
            return None

    def save_state(self) -> None:
        assert self.state is not None
        write_private(self.layout.state, json.dumps(asdict(self.state)).encode())

    def as_deployed(self, build: str) -> AppState:
        """The state to roll back to `build` with: its start command, vars, secrets and health path as
        its deploy rolled it out; the env's routes and instance count as they are now. A release
        rolled out before these records were kept gets the current state with only the build swapped."""
        if self.state is None:
            raise ProtocolError(NOT_FOUND, f"{self.key} has never been rolled out here")
        now = replace(self.state, build=build, previous=None)
        try:
            then = json.loads(self.layout.deployed(build).read_text())
        except FileNotFoundError:
            return now
        except ValueError as e:
            log.error("ignoring unreadable record of %s: %s", build, type(e).__name__)
            return now
        keep = {"start", "vars", "secrets", "health_path"}
        return replace(now, **{k: v for k, v in then.items() if k in keep})

    def environment(self, state: AppState) -> dict[str, str]:
        """What an instance of `state` gets (without PORT); one-off commands get the same."""
        return child_env(
            env_vars=state.vars,
            secrets=state.secrets,
            build=state.build,
            data_dir=self.layout.data,
            env=self.env,
        )

    def _spec(self, state: AppState) -> InstanceSpec:
        return InstanceSpec(
            build=state.build,
            cwd=self.layout.release(state.build),
            command=state.start,
            env=self.environment(state),
            masker=Masker(state.secrets.values()),
            pipes=self.layout.pipes,
            account=self.layout.account(),
        )

    def _route(self, routes: list[str], serving: list[Instance]) -> None:
        if serving:
            self.router.set_route(self.key, routes, [i.upstream for i in serving])
        else:
            self.router.remove_route(self.key)

    async def rollout(
        self, state: AppState, on_progress: Callable[[int, int], None], health_timeout: float = HEALTH_TIMEOUT
    ) -> None:
        if not releases.is_complete(self.layout, state.build):
            raise ProtocolError(NOT_FOUND, f"release {state.build} is not prepared")
        spec = self._spec(state)
        old, new = list(self.instances), []
        old_routes = self.state.routes if self.state else state.routes
        try:
            for index in range(state.instances):
                instance = Instance(spec, index=index, port=health.free_port(), output=self.output)
                new.append(instance)
                await instance.start()
                await self._wait_healthy(instance, state.health_path, health_timeout)
                self._route(state.routes, new + old[len(new) :])
                if index < len(old):
                    await self.router.drain(old[index].upstream, DRAIN_TIMEOUT)
                on_progress(index + 1, state.instances)
            self._route(state.routes, new)
            for extra in old[len(new) :]:
                await self.router.drain(extra.upstream, DRAIN_TIMEOUT)
        except BaseException:
            self._route(old_routes, old)
            await asyncio.gather(*(i.stop() for i in new), return_exceptions=True)
            raise
        self.instances = new
        state.previous = self.state.previous if self.state else None
        self.state = state
        self.save_state()
        self.layout.create()
        write_private(self.layout.deployed(state.build), json.dumps(asdict(state)).encode())
        await asyncio.gather(*(i.stop() for i in old), return_exceptions=True)

    async def _wait_healthy(self, instance: Instance, path: str, within: float) -> None:
        deadline = time.monotonic() + within
        fast_until = time.monotonic() + HEALTH_FAST_FOR  # a refused probe costs ~0.3 ms: poll fast
        while time.monotonic() < deadline:
            if await health.probe(instance.port, path):
                return
            if not instance.running and instance.exit_code is not None:
                reason = f"exited with {instance.exit_code} before answering {path}"
                break
            await asyncio.sleep(HEALTH_FAST_INTERVAL if time.monotonic() < fast_until else HEALTH_INTERVAL)
        else:
            reason = f"did not answer {path} with 2xx/3xx within {within:.0f} s"
        await asyncio.sleep(0.2)  # let its last output reach the tail
        tail = list(instance.tail)
        raise ProtocolError(
            FAILED,
            f"new instance #{instance.index} of {instance.spec.build} (port {instance.port}) {reason}; "
            "the old instances keep serving" + "".join(f"\n  {line}" for line in tail),
            hint="check the start command: it must serve HTTP on 127.0.0.1:$PORT",
            tail=tail,
        )

    def finalize(self, build: str, keep: int) -> list[str]:
        previous = releases.point_current(self.layout, build)
        if self.state is not None and previous != build:
            self.state.previous = previous
            self.save_state()
        protected = {build, *(i.spec.build for i in self.instances)}
        if self.state and self.state.previous:
            protected.add(self.state.previous)
        return releases.prune(self.layout, keep, protected)

    async def restore(self) -> None:
        """Bring back what state.json says was running, routed at once: the instances an earlier
        agent left running are adopted (same process, same port), the rest started anew. Leftovers
        of another build or of an agent that did not leave them (their output not on our FIFO) are
        stopped: they would hold ports and serve what is no longer current."""
        state = self.state
        if state is None or not releases.is_complete(self.layout, state.build):
            return
        spec = self._spec(state)
        stale = []
        for left in procs.leftover_instances(self.layout.releases) if self.layout.releases.is_dir() else []:
            instance = Instance(spec, index=len(self.instances), port=left.port, output=self.output)
            if left.build != state.build or left.output != str(instance.output_pipe) or self._full(state):
                stale.append(left.pid)
                continue
            try:
                await instance.adopt(left.pid)
            except OSError as e:  # gone meanwhile, or no pidfd_open (Linux < 5.3)
                log.warning("%s: cannot adopt instance %d: %s", self.key, left.pid, e)
                stale.append(left.pid)
                continue
            self.instances.append(instance)
        await asyncio.gather(*(procs.kill_group(pid, STOP_GRACE) for pid in stale))
        if stale:
            log.warning("%s: stopped %d instance(s) left by an earlier agent", self.key, len(stale))
        adopted = len(self.instances)
        while not self._full(state):
            instance = Instance(spec, index=len(self.instances), port=health.free_port(), output=self.output)
            await instance.start()
            self.instances.append(instance)
        self._route(state.routes, self.instances)
        log.info(
            "restored %s: %d instance(s) of %s, %d of them adopted",
            self.key,
            len(self.instances),
            state.build,
            adopted,
        )

    def _full(self, state: AppState) -> bool:
        return len(self.instances) >= state.instances

    async def leave(self) -> None:
        """The agent is restarting: leave the instances running for the next one to adopt."""
        await asyncio.gather(*(i.leave() for i in self.instances), return_exceptions=True)
        self.instances = []
        self.output.close()

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.instances), return_exceptions=True)
        self.instances = []
        self.output.close()
