"""Screenshots of the console (deploy, secrets, releases screens): SVG and PNG, into screenshots/.

    .venv/bin/python scripts/screenshots.py            # write screenshots/*.svg and *.png
    .venv/bin/python scripts/screenshots.py --live     # run the scripted deploy in this terminal
    .venv/bin/python scripts/screenshots.py --live --fail

For now the deploys are scripted (tests/tui_scenarios.py: the same events the core emits, on a frozen
clock); the shots are therefore identical on every run. `--live` paces the same script in real time,
for watching it (e.g. under tmux). rsvg-convert comes from Debian's librsvg2-bin, installed when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tako_core.deploy.inspect import ServerView  # noqa: E402
from tako_core.secrets import SecretsStore, key_env_var  # noqa: E402
from tako_core.secrets._crypto import export_key  # noqa: E402  (fixed keys: identical shots every run)
from tako_tui.app import DeployConsole, ReleasesConsole, SecretsConsole, run_deploy_console  # noqa: E402
from tests.tui_scenarios import FakeClock, ScriptedDeploy, WallClock, console, settle, until  # noqa: E402

OUT = ROOT / "screenshots"
SECRETS = (
    ("production", "DATABASE_URL", "postgres://shop:hunter2@db.internal/shop"),
    ("production", "SENTRY_DSN", "https://4f1c@o1.ingest.sentry.io/77"),
    ("production", "STRIPE_SECRET_KEY", "sk_live_51HxAmPLe"),
    ("production", "SMTP_PASSWORD", "mail-pass-123"),
    ("staging", "DATABASE_URL", "postgres://shop:staging@db.staging/shop"),
)


@dataclass(frozen=True)
class Shot:
    name: str
    size: tuple[int, int]
    scenario: Callable[[], ScriptedDeploy]
    ready: str  # "release": the leader runs it, followers wait; "end": the deploy is over


SHOTS = (
    Shot("deploy-mid-release", (120, 40), lambda: ScriptedDeploy(hold_at="release"), "release"),
    Shot("deploy-mid-release-80x24", (80, 24), lambda: ScriptedDeploy(hold_at="release"), "release"),
    Shot("deploy-success", (120, 40), ScriptedDeploy, "end"),
    Shot("deploy-failed-release", (120, 40), lambda: ScriptedDeploy(fail_release=True), "end"),
)


async def take(shot: Shot) -> Path:
    scenario = shot.scenario()
    app = console(scenario)
    async with app.run_test(size=shot.size) as pilot:
        await wait_until_ready(app, pilot, scenario, shot.ready)
        path = Path(app.save_screenshot(filename=f"{shot.name}.svg", path=str(OUT)))
        scenario.go.set()
    return path


async def wait_until_ready(
    app: DeployConsole, pilot: Pilot[Any], scenario: ScriptedDeploy, ready: str
) -> None:
    await pilot.pause()
    if ready == "release":
        await asyncio.wait_for(scenario.reached.wait(), 10)
    else:
        await until(pilot, lambda: not app.running, within=10)
    await settle(app, pilot)


async def take_secrets(size: tuple[int, int] = (100, 28)) -> Path:
    """The secrets screen over a throwaway project whose keys come from fixed TAKO_SECRETS_KEY_* values."""
    environ = {
        key_env_var(env): export_key(bytes([n]) * 32) for n, env in enumerate(("production", "staging"), 1)
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = SecretsStore.open(Path(tmp), "shop", environ=environ)
        for env, name, value in SECRETS:
            store.set(env, name, value)
        store.save()
        cwd = Path.cwd()
        os.chdir(tmp)  # the header shows .tako/secrets.json relative to the project
        try:
            app = SecretsConsole(
                SecretsStore.open(Path(tmp), "shop", environ=environ), ["production", "staging"]
            )
            async with app.run_test(size=size) as pilot:
                await pilot.pause()
                await pilot.press("down", "r")  # reveal one value; the others stay hidden
                await pilot.pause()
                return Path(app.save_screenshot(filename="secrets.svg", path=str(OUT)))
        finally:
            os.chdir(cwd)


async def take_releases(size: tuple[int, int] = (100, 28)) -> Path:
    """The releases screen over what `inspect` would report for a 3-server env (one unreachable)."""
    from tests.test_tui_releases import Rollbacks, server

    views = [
        server("web-1", "3f2a9c1", ["3f2a9c1", "b71e004", "9c0d2aa"]),
        server("web-2", "3f2a9c1", ["3f2a9c1", "b71e004"], up=1),
        ServerView(server="web-3", error="connection refused"),
    ]

    async def load() -> list[ServerView]:
        return views

    app = ReleasesConsole(load, Rollbacks(), title="shop → production", clock=FakeClock())
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: bool(app.releases_screen.views))
        await pilot.press("down")
        await pilot.pause()
        return Path(app.save_screenshot(filename="releases.svg", path=str(OUT)))


def for_rsvg(svg: str) -> str:
    """Textual's SVG as rsvg renders it faithfully (browsers render both the same).

    rsvg drops the non-breaking spaces that open a text run unless whitespace is preserved, knows no
    Fira Code (so name a local monospace font next), and ignores `textLength`: the font size is
    matched to DejaVu Sans Mono's advance (0.602 em) so long runs keep to Textual's 12.2 px cells.
    """
    svg = svg.replace('<svg class="rich-terminal"', '<svg xml:space="preserve" class="rich-terminal"', 1)
    svg = svg.replace(
        "font-family: Fira Code, monospace;", 'font-family: "Fira Code", "DejaVu Sans Mono", monospace;'
    )
    return re.sub(r"(-matrix \{[^}]*font-size: )20px;", r"\g<1>20.26px;", svg, count=1)


def rsvg_convert() -> str:
    found = shutil.which("rsvg-convert")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "librsvg2-bin"], check=True, env=env)
    found = shutil.which("rsvg-convert")
    if found is None:
        raise SystemExit("rsvg-convert is still missing after installing librsvg2-bin")
    return found


def to_png(svg: Path, converter: str) -> Path:
    svg.write_text(for_rsvg(svg.read_text()))
    png = svg.with_suffix(".png")
    subprocess.run([converter, "--zoom", "1", "-o", str(png), str(svg)], check=True)
    return png


def live(fail: bool) -> None:
    scenario = ScriptedDeploy(clock=WallClock(), fail_release=fail, pace=0.4)
    finished = run_deploy_console(scenario, title="shop → production")
    print(finished)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="run the scripted deploy in this terminal")
    parser.add_argument("--fail", action="store_true", help="with --live: the release command fails")
    args = parser.parse_args()
    if args.live:
        live(args.fail)
        return
    OUT.mkdir(exist_ok=True)
    converter = rsvg_convert()
    svgs = [asyncio.run(take(shot)) for shot in SHOTS]
    svgs += [asyncio.run(take_secrets()), asyncio.run(take_releases())]
    for svg in svgs:
        png = to_png(svg, converter)
        print(f"{svg.relative_to(ROOT)}  {png.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
