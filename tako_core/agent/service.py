"""The agent's operations: what each request op does, given typed parameters and an event sink."""

from __future__ import annotations

import asyncio
import json
import logging
import pkgutil
import platform
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

import tako_core
from tako_core.agent import extract, releases
from tako_core.agent.layout import Layout
from tako_core.agent.leases import Leases
from tako_core.agent.params import Params
from tako_core.agent.procs import child_env
from tako_core.agent.protocol import BAD_REQUEST, NOT_FOUND, PROTOCOL_VERSION, ProtocolError, clip
from tako_core.agent.rollout import AppRuntime, AppState
from tako_core.agent.router import Router
from tako_core.agent.runs import Runs, watch
from tako_core.mask import Masker

log = logging.getLogger("tako.agent")


class Emit(Protocol):
    """Sends events of the request being handled."""

    def __call__(self, name: str, fields: dict[str, Any]) -> None: ...

    async def drain(self) -> None:
        """Wait until the client has taken what was sent (backpressure for long event streams)."""


Handler = Callable[[Params, Emit], Awaitable[dict[str, Any]]]

MAX_RELEASE_TIMEOUT = 7 * 24 * 3600.0
KEEP_RUNS = 20  # release run logs kept per app/env
LOGS_BUDGET = 512 * 1024  # encoded bytes of log lines in one reply


def _build_id() -> str | None:
    """The zipapp's content hash (written into it by transport/agent_zipapp.py); None outside a zipapp."""
    try:
        data = pkgutil.get_data("tako_core.agent", "BUILD")
    except OSError:
        return None
    return data.decode() if data else None


class Agent:
    def __init__(self, layout: Layout, router: Router) -> None:
        self.layout = layout
        self.router = router
        self.leases = Leases(layout.leases_file)
        self.runs = Runs()
        self._apps: dict[tuple[str, str], AppRuntime] = {}
        self.handlers: dict[str, Handler] = {
            "hello": self.hello,
            "lease_acquire": self.lease_acquire,
            "lease_renew": self.lease_renew,
            "lease_release": self.lease_release,
            "has_release": self.has_release,
            "prepare": self.prepare,
            "release_start": self.release_start,
            "release_watch": self.release_watch,
            "release_stop": self.release_stop,
            "cleanup": self.cleanup,
            "rollout": self.rollout,
            "finalize": self.finalize,
            "status": self.status,
            "releases": self.releases,
            "rollback": self.rollback,
            "logs": self.logs,
        }
        # Ops that change the server run to the end even when their client goes away: a rollout
        # cut in half would leave a mix of versions behind.
        self.detached = {"prepare", "cleanup", "rollout", "finalize", "rollback"}

    def runtime(self, p: Params) -> AppRuntime:
        app, env = p.name("app"), p.name("env")
        key = (app, env)
        if key not in self._apps:
            self._apps[key] = AppRuntime(app, env, self.layout.app(app, env), self.router)
        return self._apps[key]

    async def restore(self) -> None:
        """Bring back every app/env with a state.json, as it ran before the agent stopped."""
        for state_file in sorted(self.layout.apps.glob("*/*/state.json")):
            env_dir = state_file.parent
            p = Params({"app": env_dir.parent.name, "env": env_dir.name})
            try:
                runtime = self.runtime(p)
                async with runtime.exclusive("restore"):
                    await runtime.restore()
            except (ProtocolError, OSError) as e:
                log.error("cannot restore %s: %s", env_dir, e)

    async def shutdown(self) -> None:
        await self.runs.shutdown()
        await asyncio.gather(*(r.stop() for r in self._apps.values()), return_exceptions=True)

    async def hello(self, p: Params, emit: Emit) -> dict[str, Any]:
        return {
            "agent_version": tako_core.__version__,
            "protocol": PROTOCOL_VERSION,
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "free_bytes": shutil.disk_usage(self.layout.root).free,
            "codecs": list(extract.codecs()),
            "build_id": _build_id(),
        }

    async def lease_acquire(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime = self.runtime(p)
        lease = self.leases.acquire(
            runtime.app,
            runtime.env,
            p.str("holder"),
            p.str("build")[:200],  # informational ("(building)" before the build id is known)
            p.num("ttl", 30.0, 1.0, 86400.0),
            p.bool("force"),
        )
        return {"lease": lease.describe()}

    async def lease_renew(self, p: Params, emit: Emit) -> dict[str, Any]:
        self.leases.renew(p.name("app"), p.name("env"), p.str("holder"))
        return {}

    async def lease_release(self, p: Params, emit: Emit) -> dict[str, Any]:
        self.leases.release(p.name("app"), p.name("env"), p.str("holder"))
        return {}

    async def has_release(self, p: Params, emit: Emit) -> dict[str, Any]:
        return {"complete": releases.is_complete(self.runtime(p).layout, p.name("build"))}

    def _env(self, runtime: AppRuntime, build: str, p: Params) -> tuple[dict[str, str], Masker]:
        secrets = p.mapping("secrets")
        env = child_env(
            p.mapping("vars"), secrets, build=build, data_dir=runtime.layout.data, env=runtime.env
        )
        return env, Masker(secrets.values())

    async def prepare(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime, build = self.runtime(p), p.name("build")
        upload = releases.resolve_upload(self.layout.uploads, p.str("upload"))
        env, masker = self._env(runtime, build, p)
        async with runtime.exclusive("prepare"):
            await runtime.preparing(
                build,
                releases.prepare(
                    runtime.layout,
                    build,
                    upload,
                    p.opt_str("install"),
                    env,
                    masker,
                    lambda line: emit("output", {"line": clip(line)}),
                ),
            )
        return {}

    async def release_start(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime, build = self.runtime(p), p.name("build")
        if not releases.is_complete(runtime.layout, build):
            raise ProtocolError(NOT_FOUND, f"release {build} is not prepared")
        env, masker = self._env(runtime, build, p)
        runtime.layout.create()
        run = self.runs.start(
            runtime.layout.runs,
            p.command("command"),
            runtime.layout.release(build),
            env,
            masker,
            p.num("timeout", 600.0, 0.1, MAX_RELEASE_TIMEOUT),
        )
        log.info("%s: release run %s of %s started", runtime.key, run.run_id, build)
        return {"run_id": run.run_id}

    async def release_watch(self, p: Params, emit: Emit) -> dict[str, Any]:
        run = self.runs.find(self.runtime(p).layout.runs, p.str("run_id"))
        result = await watch(
            run,
            p.int("offset", 0, 0, 1 << 62),
            lambda offset, line: emit("line", {"offset": offset, "line": line}),
            emit.drain,
        )
        return asdict(result)

    async def release_stop(self, p: Params, emit: Emit) -> dict[str, Any]:
        run = self.runs.find(self.runtime(p).layout.runs, p.str("run_id"))
        run.stop()
        if run.task is not None:
            await asyncio.shield(run.task)
        return {}

    async def cleanup(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime, build = self.runtime(p), p.name("build")
        # An aborting client may still have this build's prepare running here: stop it, then queue.
        await runtime.stop_preparing(build)
        async with runtime.exclusive("cleanup", wait=True):
            if any(i.spec.build == build for i in runtime.instances):
                return {"removed": False, "kept": f"{build} has running instances"}
            if runtime.layout.current_build() == build:
                return {"removed": False, "kept": f"{build} is the current release"}
            removed = await asyncio.to_thread(releases.cleanup, runtime.layout, self.layout.uploads, build)
        return {"removed": removed}

    async def rollout(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime = self.runtime(p)
        health_path = p.opt_str("health_path") or "/"
        if not health_path.startswith("/") or any(c in health_path for c in " \r\n"):
            raise ProtocolError(BAD_REQUEST, f"health_path {health_path[:80]!r} must be a path like /health")
        state = AppState(
            build=p.name("build"),
            start=p.command("start"),
            instances=p.int("instances", 1, 1, 64),
            health_path=health_path,
            routes=p.hosts("routes"),
            vars=p.mapping("vars"),
            secrets=p.mapping("secrets"),
        )
        async with runtime.exclusive("rollout"):
            await runtime.rollout(
                state,
                lambda done, total: emit("progress", {"done": done, "total": total}),
                p.num("health_timeout", 30.0, 0.1, 3600.0),
            )
        log.info("%s: rolled out %s (%d instance(s))", runtime.key, state.build, state.instances)
        return {}

    async def finalize(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime = self.runtime(p)
        async with runtime.exclusive("finalize"):
            removed = runtime.finalize(p.name("build"), p.int("keep", 5, 1, 1000))
            self.runs.prune(runtime.layout.runs, KEEP_RUNS)
        return {"pruned": removed}

    async def rollback(self, p: Params, emit: Emit) -> dict[str, Any]:
        runtime, build = self.runtime(p), p.name("build")
        async with runtime.exclusive("rollback"):
            if runtime.state is None:
                raise ProtocolError(NOT_FOUND, f"{runtime.key} has never been rolled out here")
            previous = runtime.state
            state = AppState(
                build,
                previous.start,
                previous.instances,
                previous.health_path,
                previous.routes,
                previous.vars,
                previous.secrets,
            )
            await runtime.rollout(state, lambda done, total: emit("progress", {"done": done, "total": total}))
            runtime.finalize(build, keep=1 << 30)  # point `current` back; rollback never prunes
        return {}

    async def status(self, p: Params, emit: Emit) -> dict[str, Any]:
        apps = []
        # Every app/env with files here, and those whose first deploy is under way (a lease only).
        deployed = {(d.parent.name, d.name) for d in self.layout.apps.glob("*/*") if d.is_dir()}
        for app, env in sorted(deployed | set(self.leases.held())):
            runtime = self.runtime(Params({"app": app, "env": env}))
            lease = self.leases.get(runtime.app, runtime.env)
            apps.append(
                {
                    "app": runtime.app,
                    "env": runtime.env,
                    "current": runtime.layout.current_build(),
                    "running": runtime.state.build if runtime.state and runtime.instances else None,
                    "routes": runtime.state.routes if runtime.state else [],
                    "instances": [
                        {
                            "index": i.index,
                            "build": i.spec.build,
                            "port": i.port,
                            "pid": i.pid,
                            "running": i.running,
                            "restarts": i.restarts,
                            "inflight": self.router.inflight(i.upstream),
                        }
                        for i in runtime.instances
                    ],
                    "lease": lease.describe() if lease else None,
                }
            )
        return {"apps": apps}

    async def releases(self, p: Params, emit: Emit) -> dict[str, Any]:
        layout = self.runtime(p).layout
        current = layout.current_build()
        return {
            "releases": [
                {
                    "build": b,
                    "complete": releases.is_complete(layout, b),
                    "current": b == current,
                    "created_at": releases.created_at(layout, b),
                }
                for b in releases.builds(layout)
            ]
        }

    async def logs(self, p: Params, emit: Emit) -> dict[str, Any]:
        lines = self.runtime(p).output.tail(p.int("lines", 100, 0, 10000))
        while (
            sum(len(json.dumps(line)) + 1 for line in lines) > LOGS_BUDGET
        ):  # the reply must fit in one line
            lines = lines[len(lines) // 10 + 1 :]
        return {"lines": lines}
