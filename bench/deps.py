"""Real apps on 3 loopback servers: what a redeploy pays for its install step (Django + gunicorn, or a
Node app with express).

    .venv/bin/python bench/deps.py --stack django --servers 3 --rounds 2 [--before OLD_CHECKOUT] [--no-write]
    .venv/bin/python bench/deps.py --stack node ...

Measured, each `tako deploy --json --yes` a fresh process, wall time from spawn to exit:
- first deploy (the install runs on every server);
- code-only redeploys (only the app's code changed);
- the same redeploys with no install step at all: `start` uses dependencies installed beforehand;
- a redeploy that adds a package to the lockfile: it installs again, and the package loads from the
  new release on every server.
With --before, the first deploy and the code-only redeploys also run with tako from that checkout (its
own client and agent): the state before install reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploylib import machine, median, spread, table, write_section
from fleetlib import bench_fleet

from tests.fleet import FleetServer, write_app

DJANGO_APP = """\
from pathlib import Path

from django.conf import settings

settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="bench", MIDDLEWARE=[])

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

VERSION = Path(__file__).with_name("VERSION").read_text().strip()


def index(request):
    return HttpResponse(VERSION)


urlpatterns = [path("", index)]
application = get_wsgi_application()
"""
NODE_APP = """\
const express = require("express");
const version = require("fs").readFileSync(__dirname + "/VERSION", "utf8").trim();
const app = express();
app.get("/", (req, res) => res.send(version));
app.listen(Number(process.env.PORT), "127.0.0.1");
"""


def _run(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=600)


def _package_json(folder: Path, deps: dict[str, str]) -> None:
    """package.json and its package-lock.json (resolved from the npm registry)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(json.dumps({"name": "bench", "private": True, "dependencies": deps}))
    _run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"], folder)


@dataclass(frozen=True)
class Stack:
    title: str
    code: tuple[str, str]  # the file a code-only redeploy changes, and its text
    install: str
    start: str
    added: str  # the package a lockfile change adds
    lockfiles: Callable[[Path, bool], None]  # writes the app's lockfile(s), with `added` when True
    beforehand: Callable[[Path], str]  # installs the dependencies outside tako; returns the start command
    loads: list[str]  # argv, in the release: does `added` load

    def make_app(self, directory: Path, servers: list[FleetServer], *, start: str | None = None) -> Path:
        """The app, named after its folder; with `start`, no install step."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.code[0]).write_text(self.code[1])
        (directory / "VERSION").write_text("v0\n")
        self.lockfiles(directory, False)
        extra = "" if start else f"install = {json.dumps(self.install)}\n"
        return write_app(directory, servers, name=directory.name, start=start or self.start, extra=extra)


GUNICORN = "{venv}/bin/gunicorn -b 127.0.0.1:$PORT -w 1 app:application"


def _requirements(folder: Path, added: bool) -> None:
    (folder / "requirements.txt").write_text("Django\ngunicorn\n" + ("six\n" if added else ""))


def _venv(work: Path) -> str:
    venv = work / "shared-venv"
    _run([sys.executable, "-m", "venv", str(venv)], work)
    _requirements(work, False)
    _run([str(venv / "bin/pip"), "install", "-q", "-r", str(work / "requirements.txt")], work)
    return GUNICORN.format(venv=venv)


def _node_lock(folder: Path, added: bool) -> None:
    _package_json(folder, {"express": "^5.1.0", **({"ms": "^2.1.3"} if added else {})})


def _node_modules(work: Path) -> str:
    shared = work / "shared-node"
    _node_lock(shared, False)
    _run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], shared)
    return f"NODE_PATH={shared / 'node_modules'} node server.js"


STACKS = {
    "django": Stack(
        "Django + gunicorn",
        ("app.py", DJANGO_APP),
        "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt",
        GUNICORN.format(venv=".venv"),
        "six",
        _requirements,
        _venv,
        [".venv/bin/python", "-c", "import six"],
    ),
    "node": Stack(
        "Node + express",
        ("server.js", NODE_APP),
        "npm ci --omit=dev --no-audit --no-fund",
        "node server.js",
        "ms",
        _node_lock,
        _node_modules,
        ["node", "-e", "require('ms')"],
    ),
}


async def deploy(cfg: Path, env: dict[str, str], version: str) -> float:
    """One `tako deploy`: it returns once every server serves the new version (health checked)."""
    (cfg.parent / "VERSION").write_text(version + "\n")
    argv = [sys.executable, "-m", "tako_tui.cli", "deploy", "--json", "--yes", "-c", str(cfg)]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd="/", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 900)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"tako deploy exited with {proc.returncode}:\n{err.decode()[-3000:]}")
    return took


def loads(stack: Stack, server: FleetServer, app: str) -> bool:
    current = server.root / f"apps/{app}/production/current"
    return (
        subprocess.run(stack.loads, cwd=current, capture_output=True, check=False, timeout=60).returncode == 0
    )


async def series(
    stack: Stack,
    app: Path,
    servers: list[FleetServer],
    env: dict[str, str],
    rounds: int,
    start: str | None = None,
) -> tuple[float, list[float]]:
    """A first deploy, then `rounds` code-only redeploys."""
    cfg = await asyncio.to_thread(stack.make_app, app, servers, start=start)
    first = await deploy(cfg, env, "v1")
    again = []
    for r in range(rounds):
        with (app / stack.code[0]).open("a") as f:
            f.write(f"// change {r}\n" if stack.code[0].endswith(".js") else f"# change {r}\n")
        again.append(await deploy(cfg, env, f"v{r + 2}"))
    return first, again


INTRO = """\
A {title} app on {servers} sshd servers on loopback; its install is `{install}`. Each
`tako deploy --json --yes` is a fresh process; wall time from spawn to exit. "before" is tako from
--before (its own client and agent); "no install step" is the same app with `start` using dependencies
installed beforehand, and no `install`. Reproduce:
`.venv/bin/python bench/deps.py --stack {stack} --servers 3 --rounds 2 --before OLD_CHECKOUT`.

"""


async def measure(args: argparse.Namespace) -> str:
    stack = STACKS[args.stack]
    rows = []
    with bench_fleet(args.servers) as fleet:
        work, servers = fleet.base / "work", fleet.servers
        work.mkdir(parents=True, exist_ok=True)
        start = await asyncio.to_thread(stack.beforehand, work)
        if args.before:  # its client installs its own agent; the next series' client puts the new one back
            old_env = dict(fleet.env, PYTHONPATH=args.before)
            first, again = await series(stack, work / "before", servers, old_env, args.rounds)
            rows.append(("before: install every time", first, again))
        first, again = await series(stack, work / "after", servers, fleet.env, args.rounds)
        rows.append(("after: install reused", first, again))
        await asyncio.to_thread(stack.lockfiles, work / "after", True)
        changed = await deploy(work / "after/tako.toml", fleet.env, "v-added")
        added = all(loads(stack, s, "after") for s in servers)
        first, none = await series(stack, work / "none", servers, fleet.env, args.rounds, start)
        rows.append(("no install step (dependencies installed beforehand)", first, none))
    ratio = median(again) / median(none)
    before = f"; before: {median(rows[0][2]) / median(none):.1f}x" if args.before else ""
    intro = INTRO.format(title=stack.title, servers=args.servers, install=stack.install, stack=args.stack)
    body = intro + table(
        (f"{args.servers} servers", "first deploy s", "code-only redeploy s: median (min-max)"),
        [(name, f"{first:.2f}", spread(times)) for name, first, times in rows],
    )
    body += (
        f"\n\nCode-only redeploy with install reuse / without any install step: **{ratio:.2f}x** "
        f"(target <= 1.5x{before}).\nA redeploy adding `{stack.added}` to the lockfile: {changed:.2f} s; "
        f"it loads on every server: {added}.\n\n{machine()}\n"
    )
    return body


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", choices=sorted(STACKS), default="django")
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a checkout of tako before install reuse, to compare with")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.before:
        args.before = str(Path(args.before).resolve())
    body = asyncio.run(measure(args))
    print(body)
    if not args.no_write:
        write_section(f"Dependencies: install reuse, {STACKS[args.stack].title} (issue 14)", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
