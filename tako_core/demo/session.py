"""One run of `tako demo`, headless: the workspace, its servers, the deploy job, the answers, the cleanup.

    with Demo(servers=3, fail_release=False) as demo:
        demo.start()
        finished = await demo.deploy(sink, prompter)    # or hand `demo.deploy` to a front end
        answers = demo.answers()

Leaving the `with` block stops the agents (and their instances), the SSH hosts, anything else still
running under the workspace, and removes it. A reaper process does the same if this process is killed.
"""

from __future__ import annotations

import getpass
import http.client
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tako_core.config import ResolvedEnv, load_config, load_inventory, resolve
from tako_core.demo.fleet import DemoFleet
from tako_core.demo.processes import end_processes_under
from tako_core.demo.workspace import APP, ENV, create_workspace, database_path, write_app
from tako_core.deploy import DeployOptions, deploy
from tako_core.events import DeployFinished, EventSink, Prompter
from tako_core.secrets import SecretsStore

_REAPER_WAIT = 15.0
_HTTP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """What one server's URL answered (status 0: it did not answer; `body` says why)."""

    server: str
    url: str
    status: int
    body: str


class Demo:
    def __init__(self, servers: int, *, fail_release: bool = False, migration_pause: float = 0.8) -> None:
        self.server_count = servers
        self.fail_release = fail_release
        self.migration_pause = migration_pause
        self.workspace: Path | None = None
        self.target: ResolvedEnv | None = None
        self._fleet: DemoFleet | None = None
        self._secrets: dict[str, str] = {}
        self._reaper: subprocess.Popen[bytes] | None = None

    def start(self) -> ResolvedEnv:
        """Create the workspace, start the servers, write the app; returns what the deploy deploys."""
        self.workspace = create_workspace()
        self._start_reaper(self.workspace)
        self._fleet = DemoFleet(self.workspace, self.server_count)
        servers = self._fleet.start()
        config, environ = write_app(
            self.workspace, servers, fail_release=self.fail_release, migration_pause=self.migration_pause
        )
        self._secrets = SecretsStore.open(config.parent, APP, environ=environ).get_all(ENV)
        self.target = resolve(load_config(config), ENV, load_inventory(self._fleet.home))
        return self.target

    async def deploy(self, sink: EventSink, prompter: Prompter) -> DeployFinished:
        if self.target is None or self.workspace is None:
            raise RuntimeError("Demo.start() first")
        options = DeployOptions(
            holder=f"{getpass.getuser()} (tako demo, pid {os.getpid()})",
            confirmed=True,  # running the demo is the confirmation
            cache_dir=self.workspace / "cache",
        )
        return await deploy(self.target, secrets=self._secrets, sink=sink, prompter=prompter, options=options)

    def answers(self) -> list[Answer]:
        """GET / on every server's router, as `curl` would."""
        if self.target is None:
            return []
        return [_get(s.name, s.http_host, s.http_port) for s in self.target.servers]

    def schema_version(self) -> int | None:
        """The shared database's schema version, straight from the file (None: no database yet)."""
        if self.workspace is None or not database_path(self.workspace).exists():
            return None
        db = sqlite3.connect(f"file:{database_path(self.workspace)}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()

    def close(self) -> None:
        """Stop everything the demo started and remove the workspace; safe to call more than once."""
        if self._fleet is not None:
            self._fleet.stop()
            self._fleet = None
        if self.workspace is not None:
            end_processes_under(self.workspace)
            shutil.rmtree(self.workspace, ignore_errors=True)
        if self._reaper is not None:
            self._stop_reaper(self._reaper)
            self._reaper = None
        self.workspace = None

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_reaper(self, workspace: Path) -> None:
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "tako_core.demo.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on the terminal and its hangup must not reach it
        )
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(f"{workspace}\n".encode())
        self._reaper.stdin.flush()

    @staticmethod
    def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
        """Closing its pipe lets it go: it finds nothing left to end and exits."""
        if reaper.stdin is not None:
            reaper.stdin.close()
        try:
            reaper.wait(_REAPER_WAIT)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait(_REAPER_WAIT)


def _get(name: str, host: str, port: int) -> Answer:
    url = f"http://{host}:{port}/"
    conn = http.client.HTTPConnection(host, port, timeout=_HTTP_TIMEOUT)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return Answer(name, url, response.status, response.read().decode(errors="replace"))
    except OSError as err:
        return Answer(name, url, 0, f"no answer: {err}")
    finally:
        conn.close()
