"""A real Django + gunicorn app on 3 loopback servers: what a redeploy pays for its install step.

    .venv/bin/python bench/deps.py --servers 3 --rounds 2 [--before OLD_CHECKOUT] [--no-write]

The app is one Django view served by gunicorn; its install is
`python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt` (Django, gunicorn). Measured, each
`tako deploy --json --yes` a fresh process, wall time from spawn to exit:
- first deploy (the install runs on every server);
- code-only redeploys (only app.py changed);
- the same redeploys with no install step at all: `start` runs gunicorn from a venv built beforehand;
- a redeploy that adds a package to requirements.txt: it installs again, and the package is importable
  from the new release on every server.
With --before, the first deploy and the code-only redeploys also run with tako from that checkout (its
own agent, on fresh roots): the state before install reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploylib import machine, median, spread, table, write_section
from fleetlib import bench_fleet

from tests.fleet import FleetServer, write_app

APP_PY = """\
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
REQUIREMENTS = "Django\ngunicorn\n"
INTRO = """\
A Django + gunicorn app (one view; `requirements.txt`: Django, gunicorn) on {servers} sshd servers on
loopback; its install is `python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt`
(packages from this machine's local package index, so the figures are venv + pip's own work, not
downloads). Each `tako deploy --json --yes` is a fresh process; wall time from spawn to exit. "before"
is tako from --before (its own client and agent); "no install step" is the same app with `start`
running gunicorn from a venv built beforehand and no `install`. Reproduce:
`.venv/bin/python bench/deps.py --servers 3 --rounds 2 --before OLD_CHECKOUT` (about 3 minutes).

"""
ADDED = "six"  # the package a lockfile change adds
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
START = "{venv}/bin/gunicorn -b 127.0.0.1:$PORT -w 1 app:application"


def make_django_app(directory: Path, servers: list[FleetServer], *, venv: str | None) -> Path:
    """The app, named after its folder; with `venv`, no install step: gunicorn runs from that venv."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(APP_PY)
    (directory / "requirements.txt").write_text(REQUIREMENTS)
    (directory / "VERSION").write_text("v0\n")
    extra = "" if venv else f'install = "{INSTALL}"\n'
    return write_app(
        directory, servers, name=directory.name, start=START.format(venv=venv or ".venv"), extra=extra
    )


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


def importable(server: FleetServer, app: str, module: str) -> bool:
    current = server.root / f"apps/{app}/production/current"
    probe = [str(current / ".venv/bin/python"), "-c", f"import {module}"]
    return subprocess.run(probe, cwd=current, capture_output=True, check=False, timeout=60).returncode == 0


async def series(
    app: Path, servers: list[FleetServer], env: dict[str, str], rounds: int, *, venv: str | None = None
) -> tuple[float, list[float]]:
    """A first deploy, then `rounds` code-only redeploys."""
    cfg = make_django_app(app, servers, venv=venv)
    first = await deploy(cfg, env, "v1")
    again = []
    for r in range(rounds):
        with (app / "app.py").open("a") as f:
            f.write(f"# change {r}\n")
        again.append(await deploy(cfg, env, f"v{r + 2}"))
    return first, again


def shared_venv(work: Path) -> Path:
    """The venv the no-install series runs gunicorn from (the servers share this machine)."""
    venv = work / "shared-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (work / "requirements.txt").write_text(REQUIREMENTS)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r", str(work / "requirements.txt")], check=True)
    return venv


async def measure(args: argparse.Namespace) -> str:
    rows = []
    with bench_fleet(args.servers) as fleet:
        work, servers = fleet.base / "work", fleet.servers
        venv = await asyncio.to_thread(shared_venv, work)
        if args.before:  # its client installs its own agent; the next series' client puts the new one back
            old_env = dict(fleet.env, PYTHONPATH=args.before)
            first, again = await series(work / "before", servers, old_env, args.rounds)
            rows.append(("before: install every time", first, again))
        first, again = await series(work / "after", servers, fleet.env, args.rounds)
        rows.append(("after: install reused", first, again))
        (work / "after/requirements.txt").write_text(REQUIREMENTS + ADDED + "\n")
        changed = await deploy(work / "after/tako.toml", fleet.env, "v-added")
        added = all(importable(s, "after", ADDED) for s in servers)
        first, none = await series(work / "none", servers, fleet.env, args.rounds, venv=str(venv))
        rows.append(("no install step (venv built beforehand)", first, none))
    ratio = median(again) / median(none)
    before = f"; before: {median(rows[0][2]) / median(none):.1f}x" if args.before else ""
    body = INTRO.format(servers=args.servers) + table(
        (f"{args.servers} servers", "first deploy s", "code-only redeploy s: median (min-max)"),
        [(name, f"{first:.2f}", spread(times)) for name, first, times in rows],
    )
    body += (
        f"\n\nCode-only redeploy with install reuse / without any install step: **{ratio:.2f}x** "
        f"(target <= 1.5x{before}).\nA redeploy adding `{ADDED}` to requirements.txt: {changed:.2f} s; "
        f"importable on every server: {added}.\n\n{machine()}\n"
    )
    return body


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        write_section("Dependencies: install reuse (issue 14)", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
