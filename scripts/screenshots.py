"""Screenshots of the consoles (deploy, secrets, releases, `tako console`) from real runs, as SVG, PNG.

    .venv/bin/python scripts/screenshots.py

Every deploy shot is a real deploy: the demo's fleet (`tako_core.demo`: in-process SSH servers on
127.0.0.x with real agents, a sample app whose release command migrates one SQLite database) deployed
in a `DeployConsole` under Pilot, and saved at the moment the shot is named after. Build ids and
durations therefore differ between runs; the snapshot tests (scripted, on a frozen clock) are the
deterministic record. rsvg-convert comes from Debian's librsvg2-bin, installed when missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.widgets import DataTable, Log  # noqa: E402

from tako_core.config import load_config  # noqa: E402
from tako_core.demo import APP, ENV, Demo  # noqa: E402
from tako_core.deploy.inspect import inspect  # noqa: E402
from tako_core.events import WAITING_FOR_RELEASE, ArtifactBuilt, Event, Phase, State  # noqa: E402
from tako_core.secrets import SecretsStore, key_env_var, new_exported_key  # noqa: E402
from tako_tui.app import Console, DeployConsole, ReleasesConsole, SecretsConsole  # noqa: E402
from tako_tui.commands.console import console_env  # noqa: E402
from tako_tui.commands.releases import rollback_job  # noqa: E402
from tako_tui.screens.deploy import DeployScreen  # noqa: E402
from tests.tui_scenarios import settle, until  # noqa: E402

OUT = ROOT / "screenshots"
TITLE = f"{APP} → {ENV}"
ATTEMPTS = 3  # a mid-release moment lasts ~2 s: a very slow machine may miss it once
REACH_RELEASE = 60.0  # seconds: demo start, build, connect, upload, install
FINISH = 90.0  # seconds: a whole demo deploy takes ~6
# The migration's second step (sample-app/migrate.py): its output has been streaming for a while.
MIGRATION_STEP = "2/3"
SECRETS = (
    ("production", "DATABASE_URL", "postgres://shop:hunter2@db.internal/shop"),
    ("production", "SENTRY_DSN", "https://4f1c@o1.ingest.sentry.io/77"),
    ("production", "STRIPE_SECRET_KEY", "sk_live_51HxAmPLe"),
    ("production", "SMTP_PASSWORD", "mail-pass-123"),
    ("staging", "DATABASE_URL", "postgres://shop:staging@db.staging/shop"),
)
SECRETS_TOML = """name = "shop"
start = "python3 app.py"

[envs.production]
servers = ["web-1", "web-2", "web-3"]

[envs.staging]
servers = ["staging-1"]
"""


class MomentMissed(Exception):
    """The moment a shot waits for passed before the screen was captured."""


def mid_release(screen: DeployScreen) -> bool:
    """The leader runs the release command (its output streaming) while both followers wait."""
    panels = screen.panels
    leaders = [p for p in panels if p.role == "leader"]
    followers = [p for p in panels if p.role == "follower"]
    return (
        len(leaders) == 1
        and len(followers) == 2
        and leaders[0].phase_state(Phase.RELEASE) is State.RUNNING
        and all(
            f.phase_state(Phase.RELEASE) is State.WAITING and WAITING_FOR_RELEASE in f.plain
            for f in followers
        )
        and any(MIGRATION_STEP in line for line in screen.output.lines_of(leaders[0].server))
    )


def deployed(screen: DeployScreen) -> bool:
    finished = screen.model.finished
    return finished is not None and finished.ok


def release_failed(screen: DeployScreen) -> bool:
    finished = screen.model.finished
    leaders = [p for p in screen.panels if p.role == "leader"]
    return (
        finished is not None
        and finished.exit_code == 1
        and len(leaders) == 1
        and leaders[0].phase_state(Phase.RELEASE) is State.FAILED
    )


@dataclass(frozen=True)
class Shot:
    name: str
    size: tuple[int, int]
    moment: Callable[[DeployScreen], bool]
    fail_release: bool = False


SHOTS = (
    Shot("deploy-mid-release", (120, 40), mid_release),
    Shot("deploy-mid-release-80x24", (80, 24), mid_release),
    Shot("deploy-success", (120, 40), deployed),
    Shot("deploy-failed-release", (120, 40), release_failed, fail_release=True),
)


async def take(shot: Shot) -> Path:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await take_once(shot)
        except MomentMissed as missed:
            print(f"{shot.name}: missed the moment, {missed} (attempt {attempt})", file=sys.stderr)
    raise SystemExit(f"{shot.name}: missed its moment {ATTEMPTS} times")


async def take_once(shot: Shot) -> Path:
    """One real deploy of the demo app to 3 servers, saved when `shot.moment` holds on the screen."""
    with Demo(3, fail_release=shot.fail_release) as demo:
        demo.start()
        app = DeployConsole(demo.deploy, title=TITLE)
        async with app.run_test(size=shot.size) as pilot:
            screen = app.deploy_screen

            def reached() -> bool:
                app.bridge.flush()
                return shot.moment(screen) or not app.running

            await until(pilot, reached, within=REACH_RELEASE)
            await settle(app, pilot)
            if not shot.moment(screen):
                raise MomentMissed(f"the deploy is {screen.model.overall()}")
            path = Path(app.save_screenshot(filename=f"{shot.name}.svg", path=str(OUT)))
            # The deploy ends by itself (a mid-release shot lets it finish) before the fleet stops.
            await until(pilot, lambda: not app.running, within=FINISH)
    return path


class Declined:
    """The prompter of the script's headless deploys: nobody answers, every question is a no."""

    async def confirm(self, question: str) -> bool:
        return False


async def take_releases(size: tuple[int, int] = (100, 28)) -> Path:
    """The releases screen after two real deploys (the app changed in between: two builds kept)."""
    with Demo(3) as demo:
        target = demo.start()
        builds: list[str] = []

        def record(event: Event) -> None:  # headless: only the build id matters here
            if isinstance(event, ArtifactBuilt):
                builds.append(event.build)

        for _ in range(2):
            finished = await demo.deploy(record, Declined())
            if not finished.ok:
                raise SystemExit(f"releases: a demo deploy failed: {finished.error}")
            assert demo.workspace is not None
            with (demo.workspace / "app" / "server.py").open("a") as source:
                source.write("# a change: the next deploy is a new build\n")
        app = ReleasesConsole(lambda: inspect(target), rollback_job(target, confirmed=True), title=TITLE)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: bool(app.releases_screen.views), within=REACH_RELEASE)
            await pilot.press("down")  # the previous build: the one a rollback would go back to
            await pilot.pause()
            if app.releases_screen.selected != builds[0]:
                raise SystemExit(
                    f"releases: expected {builds[0]} selected, got {app.releases_screen.selected}"
                )
            return Path(app.save_screenshot(filename="releases.svg", path=str(OUT)))


async def take_console(size: tuple[int, int] = (100, 28)) -> list[Path]:
    """`tako console` after a real deploy of the demo: its status view, then its logs view live while
    a few requests reach every server."""
    with Demo(3) as demo:
        target = demo.start()
        finished = await demo.deploy(lambda event: None, Declined())
        if not finished.ok:
            raise SystemExit(f"console: the demo deploy failed: {finished.error}")
        assert demo.workspace is not None
        project = demo.workspace / "app"
        app = Console(APP, [console_env(target)], lambda: SecretsStore.open(project, APP))
        async with app.run_test(size=size) as pilot:
            table = app.status_screen.query_one("#status", DataTable)
            await until(pilot, lambda: table.row_count == 3 and bool(app.status_screen.views), REACH_RELEASE)
            await pilot.pause()
            shots = [Path(app.save_screenshot(filename="console.svg", path=str(OUT)))]
            await pilot.press("l")
            for _ in range(3):
                await asyncio.to_thread(demo.answers)
            log = app.screen.query_one("#logs", Log)
            await until(
                pilot, lambda: sum("GET / 200" in str(line) for line in log.lines) >= 9, REACH_RELEASE
            )
            await pilot.pause()
            shots.append(Path(app.save_screenshot(filename="console-logs.svg", path=str(OUT))))
            return shots


@contextmanager
def exported_keys(envs: tuple[str, ...]) -> Iterator[None]:
    """Fresh keys in TAKO_SECRETS_KEY_<ENV>, as CI passes them (no keyring), for the run only."""
    names = [key_env_var(env) for env in envs]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: new_exported_key() for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def take_secrets(size: tuple[int, int] = (100, 28)) -> Path:
    """The secrets screen over a throwaway project, opened as `tako secrets edit` opens it."""
    with tempfile.TemporaryDirectory() as tmp, exported_keys(("production", "staging")):
        project = Path(tmp)
        (project / "tako.toml").write_text(SECRETS_TOML)
        store = SecretsStore.open(project, "shop")
        for env, name, value in SECRETS:
            store.set(env, name, value)
        store.save()
        config = load_config(project / "tako.toml")
        cwd = Path.cwd()
        os.chdir(project)  # the header shows .tako/secrets.json relative to the project
        try:
            reopened = SecretsStore.open(project, config.name)
            app = SecretsConsole(reopened, sorted({*config.envs, *reopened.envs()}))
            async with app.run_test(size=size) as pilot:
                await pilot.pause()
                await pilot.press("down", "r")  # reveal one value; the others stay hidden
                await pilot.pause()
                return Path(app.save_screenshot(filename="secrets.svg", path=str(OUT)))
        finally:
            os.chdir(cwd)


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


def main() -> None:
    if len(sys.argv) > 1:
        raise SystemExit(__doc__)
    OUT.mkdir(exist_ok=True)
    converter = rsvg_convert()
    svgs = [asyncio.run(take(shot)) for shot in SHOTS]
    svgs += [asyncio.run(take_secrets()), asyncio.run(take_releases()), *asyncio.run(take_console())]
    for svg in svgs:
        png = to_png(svg, converter)
        print(f"{svg.relative_to(ROOT)}  {png.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
