"""`tako status`, `tako releases ls` and `tako releases rollback` against real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from tako_core.deploy import DeployOptions, rollback
from tako_core.deploy.inspect import inspect
from tako_core.events import DeployFinished, Event, Outcome, Phase, PhaseChanged, RolloutProgress, State
from tako_tui.commands.frontend import TerminalPrompter
from tako_tui.commands.options import load_target
from tests.deploykit import app_dir, get, sample_app, tako, timeline
from tests.fleet import Fleet


def test_status_releases_and_rollback(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(2)
    builds = []
    for version in ("v1", "v2"):
        cfg = sample_app(tmp_path, servers, version=version, release="python3 migrate.py")
        run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
        assert run.code == 0, run.stderr
        builds.append(next(e["build"] for e in run.events() if e["event"] == "ArtifactBuilt"))
    v1, v2 = builds
    assert v1 != v2

    listed = tako("releases", "ls", "--json", cwd=cfg.parent)
    assert listed.code == 0, listed.stderr
    kept = json.loads(listed.stdout)
    for s in servers:
        assert {r["build"] for r in kept[s.name]} == {v1, v2}
        assert [r["build"] for r in kept[s.name] if r["current"]] == [v2]

    status = tako("status", cwd=cfg.parent)
    assert status.code == 0, status.stderr
    assert status.stdout.splitlines() == [f"{s.name}: current {v2}, 1/1 instances up" for s in servers]

    refused = tako("releases", "rollback", v1, "--no-tui", cwd=cfg.parent)
    assert refused.code == 2  # production, no terminal, no --yes
    assert "pass --yes" in refused.stderr

    missing = tako("releases", "rollback", "nope", "--no-tui", "--yes", cwd=cfg.parent)
    assert missing.code == 1
    assert "does not keep release nope" in missing.stderr
    assert all(get(s).startswith("v2 ") for s in servers)

    back = tako("releases", "rollback", v1, "--no-tui", "--yes", cwd=cfg.parent)
    assert back.code == 0, back.stderr
    for s in servers:
        assert get(s) == f"v1 {v1}"
        assert (app_dir(s) / "current").resolve().name == v1
    ran = [what for _, what in timeline(servers[0]) if what == "release-begin"]
    assert len(ran) == 2  # a rollback never runs the release command


def test_production_without_a_terminal_needs_yes(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(1)
    cfg = sample_app(tmp_path, servers)
    run = tako("deploy", "--no-tui", cwd=cfg.parent)
    assert run.code == 2
    assert "pass --yes" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (app_dir(servers[0]) / "releases").exists()


async def test_cancelling_a_rollback_reports_130_and_closes_its_sessions(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """Ctrl-C (the task cancelled) before any server changed aborts; during the switch it lets every
    server finish, however often it comes. Either way: exit 130, and every SSH connection and lease is
    let go, even when another Ctrl-C arrives while the run closes its sessions."""
    servers = fleet(2)
    builds = []
    for version in ("v1", "v2"):
        cfg = sample_app(tmp_path, servers, version=version)
        run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
        assert run.code == 0, run.stderr
        builds.append(next(e["build"] for e in run.events() if e["event"] == "ArtifactBuilt"))
    v1, v2 = builds
    target = load_target(cfg, None)

    async def cancelled(when: Callable[[Event], bool]) -> DeployFinished:
        def sink(event: Event) -> None:
            if when(event) or isinstance(event, DeployFinished):  # the second: while closing
                task.cancel()

        options = DeployOptions(holder="ci@runner", confirmed=True)
        task = asyncio.ensure_future(
            rollback(target, v1, secrets={}, sink=sink, prompter=TerminalPrompter(), options=options)
        )
        finished = await asyncio.wait_for(task, 60)
        async with asyncio.timeout(10):  # an sshd serving a connection exits just after it closes
            while any(s.host.connections() for s in servers):  # noqa: ASYNC110 (processes, not events)
                await asyncio.sleep(0.05)
        views = await inspect(target)
        assert [v.status.lease if v.status else "?" for v in views] == [None, None]  # no lease held
        return finished

    connected = await cancelled(
        lambda e: isinstance(e, PhaseChanged) and e.phase is Phase.CONNECT and e.state is State.DONE
    )
    assert (connected.exit_code, connected.interrupted, connected.error) == (130, True, "interrupted")
    assert {r.outcome for r in connected.results} == {Outcome.ABORTED}
    assert [get(s) for s in servers] == [f"v2 {v2}"] * 2  # nothing changed

    switching = await cancelled(  # Ctrl-C as the switch starts, and again at each instance ready
        lambda e: (
            isinstance(e, RolloutProgress)
            or (isinstance(e, PhaseChanged) and e.phase is Phase.ROLLOUT and e.state is State.RUNNING)
        )
    )
    assert (switching.exit_code, switching.interrupted) == (130, True)
    assert {r.outcome for r in switching.results} == {Outcome.DEPLOYED}  # every server finished
    for s in servers:
        assert get(s) == f"v1 {v1}"
        assert (app_dir(s) / "current").resolve().name == v1


class Answering:
    """A person at the console who answers every question the same way, and remembers them."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.questions: list[str] = []

    async def confirm(self, question: str) -> bool:
        self.questions.append(question)
        return self.answer


async def test_a_production_rollback_asks_through_the_prompter_first(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """The core decides to ask (production, no --yes), before touching any server; declining is 130."""
    servers = fleet(2)
    target = load_target(sample_app(tmp_path, servers), None)
    person = Answering(False)
    asked = DeployOptions(holder="me")
    finished = await rollback(target, "b71e004", secrets={}, sink=print, prompter=person, options=asked)
    assert person.questions == ["Roll web on production (s1, s2) back to b71e004?"]
    assert (finished.exit_code, finished.error) == (130, "not confirmed; nothing was changed")
    assert all(s.host.connections() == 0 for s in servers)  # asked before connecting anywhere

    confirmed = DeployOptions(holder="me", confirmed=True)  # --yes: nobody is asked
    await rollback(target, "b71e004", secrets={}, sink=print, prompter=person, options=confirmed)
    assert len(person.questions) == 1


def test_rollback_restores_the_release_as_it_was_deployed(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """Its start command and vars as of its deploy, not the current ones; the summary says rollback."""
    servers = fleet(2)
    builds = []
    for version, say, start in (
        ("v1", "one", "python3 app.py"),
        ("v2", "two", "SAMPLE_SAY=started python3 app.py"),
    ):
        cfg = sample_app(
            tmp_path, servers, version=version, start=start, extra=f'[vars]\nSAMPLE_SAY = "{say}"\n'
        )
        run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
        assert run.code == 0, run.stderr
        builds.append(next(e["build"] for e in run.events() if e["event"] == "ArtifactBuilt"))
    v1, v2 = builds
    assert [get(s) for s in servers] == [f"v2 {v2} started"] * 2

    back = tako("releases", "rollback", v1, "--no-tui", "--yes", cwd=cfg.parent)
    assert back.code == 0, back.stderr
    assert [get(s) for s in servers] == [f"v1 {v1} one"] * 2
    assert f"roll web on production back to {v1}: 2 server(s)" in back.stderr
    assert f"rollback to {v1} succeeded" in back.stderr

    forth = tako("releases", "rollback", v2, "--no-tui", "--yes", cwd=cfg.parent)
    assert forth.code == 0, forth.stderr
    assert [get(s) for s in servers] == [f"v2 {v2} started"] * 2


async def test_the_time_a_question_waits_is_not_the_runs(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """The run's clock (the console's elapsed timer, the summary's duration) stops while it asks."""
    servers = fleet(1)
    target = load_target(sample_app(tmp_path, servers), None)

    class Slow(Answering):
        async def confirm(self, question: str) -> bool:
            await asyncio.sleep(1.5)  # a person reading the question
            return await super().confirm(question)

    events: list[Event] = []
    asked = DeployOptions(holder="me")
    finished = await rollback(
        target, "b71e004", secrets={}, sink=events.append, prompter=Slow(False), options=asked
    )
    assert finished.exit_code == 130
    assert finished.seconds < 0.5
