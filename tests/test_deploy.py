"""`tako deploy` end to end over real sshd: 3 servers, the sample app, its release command.

Each test is one acceptance line of the deploy issue; all of them run the real `tako` command.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tako_core.events import DeployFinished
from tests.delayproxy import Link
from tests.deploykit import TAKO, Run, app_dir, get, sample_app, tako, timeline
from tests.fleet import Fleet, FleetServer
from tests.procs import alive

RELEASE = "python3 migrate.py"


def vars_table(**values: str) -> str:
    return "\n[vars]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items())


def deploy_ok(cfg: Path, servers: list[FleetServer], version: str) -> None:
    run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    for s in servers:
        assert get(s).startswith(version + " ")


def current_build(server: FleetServer) -> str:
    return (app_dir(server) / "current").resolve().name


def releases(server: FleetServer) -> set[str]:
    return {p.name for p in (app_dir(server) / "releases").iterdir() if not p.name.startswith(".")}


def assert_untouched(
    servers: list[FleetServer], before: dict[str, tuple[str, set[str]]], version: str
) -> None:
    """Every server still serves `version` from the same `current`, with no new release dir left."""
    for s in servers:
        assert get(s).startswith(version + " ")
        assert (current_build(s), releases(s)) == before[s.name]


def snapshot(servers: list[FleetServer]) -> dict[str, tuple[str, set[str]]]:
    return {s.name: (current_build(s), releases(s)) for s in servers}


def assert_gone(pid_file: Path) -> None:
    """The process whose pid the release command recorded is dead (or a zombie awaiting its reaper)."""
    assert not alive(int(pid_file.read_text()))


@dataclass
class Live:
    """Three servers serving v1 of the sample app; `attempt` deploys v2 with other settings."""

    servers: list[FleetServer]
    tmp_path: Path
    before: dict[str, tuple[str, set[str]]]
    releases_ran: int

    def attempt(self, **kwargs: str) -> Run:
        kwargs.setdefault("release", RELEASE)
        cfg = sample_app(self.tmp_path, self.servers, version="v2", **kwargs)
        return tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)

    def assert_untouched(self) -> None:
        """Every server still serves v1 from the same `current`, no new release dir left anywhere."""
        assert_untouched(self.servers, self.before, "v1")

    @property
    def leader_data(self) -> Path:
        return app_dir(self.servers[0]) / "data"

    def release_ran_again(self) -> bool:
        return len(timeline(self.servers[0])) != self.releases_ran


@pytest.fixture(params=["direct", "rtt30ms"])
def three(
    request: pytest.FixtureRequest, fleet: Fleet, delayed_fleet: Callable[[int, Link], list[FleetServer]]
) -> list[FleetServer]:
    """Three servers, reached directly or through a delay proxy (30 ms round trips): the deploy's
    guarantees must not depend on replies arriving at once."""
    if request.param == "direct":
        return fleet(3)
    return delayed_fleet(3, Link.of(rtt_ms=30))


@pytest.fixture
def live(three: list[FleetServer], tako_home: Path, tmp_path: Path) -> Live:
    servers = three
    deploy_ok(sample_app(tmp_path, servers, release=RELEASE), servers, "v1")
    return Live(servers, tmp_path, snapshot(servers), len(timeline(servers[0])))


def test_a_clean_deploy_runs_the_release_once_on_the_leader_before_any_instance(
    three: list[FleetServer], tako_home: Path, tmp_path: Path
) -> None:
    servers = three
    cfg = sample_app(tmp_path, servers, release=RELEASE)
    run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    events = run.events()

    leader, followers = servers[0], servers[1:]
    assert [what for _, what in timeline(leader) if what.startswith("release-begin")] == ["release-begin"]
    for f in followers:
        assert not any(what.startswith("release") for _, what in timeline(f))

    gate = next(i for i, e in enumerate(events) if e["event"] == "GateOpened")
    for f in followers:
        waiting = [
            i
            for i, e in enumerate(events)
            if e["event"] == "PhaseChanged"
            and e["server"] == f.name
            and e["detail"] == "Waiting for release command"
        ]
        assert waiting
        assert waiting[0] < gate

    release_end = next(t for t, what in timeline(leader) if what.startswith("release-end"))
    starts = [t for s in servers for t, what in timeline(s) if what.startswith("start")]
    assert len(starts) == 3
    assert min(starts) > release_end

    build = next(e["build"] for e in events if e["event"] == "ArtifactBuilt")
    for s in servers:
        assert get(s) == f"v1 {build}"
        assert current_build(s) == build
    finished = events[-1]
    assert finished["event"] == "DeployFinished"
    assert finished["ok"] is True
    assert [r["outcome"] for r in finished["results"]] == ["deployed"] * 3


def test_a_failing_release_aborts_everywhere(live: Live) -> None:
    run = live.attempt(extra=vars_table(SAMPLE_RELEASE_EXIT="1"))
    assert run.code == 1
    assert "s1    | migration failed with code 1" in run.stderr
    assert "the release command on s1 exited with code 1" in run.stderr
    assert "Traceback" not in run.stderr
    live.assert_untouched()


def test_a_release_past_its_timeout_is_killed_with_its_process_group(live: Live) -> None:
    stubborn = "sh -c 'trap \"\" TERM; sleep 120 & echo $! > $TAKO_DATA_DIR/child.pid; wait'"
    started = time.monotonic()
    run = live.attempt(release=stubborn, extra='release_timeout = "1s"\n')
    assert run.code == 1
    assert "timed out after 1.0s" in run.stderr
    assert time.monotonic() - started < 30
    assert_gone(live.leader_data / "child.pid")
    live.assert_untouched()


def test_an_unreachable_follower_stops_the_deploy_before_the_release(live: Live) -> None:
    live.servers[2].stop()
    run = live.attempt()
    assert run.code == 1
    assert "s3" in run.stderr
    assert "error:" in run.stderr
    assert not live.release_ran_again()
    live.servers[2].start()
    live.assert_untouched()


def test_a_failing_install_on_a_follower_stops_the_deploy_before_the_release(live: Live) -> None:
    (app_dir(live.servers[1]) / "data" / "no-install").touch()
    install = 'test ! -e "$TAKO_DATA_DIR/no-install" || { echo "disk full (simulated)"; exit 4; }'
    run = live.attempt(extra=f"install = '{install}'\n")
    assert run.code == 1
    assert "s2    | disk full (simulated)" in run.stderr
    assert not live.release_ran_again()
    live.assert_untouched()


def _spawn_deploy(cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TAKO, "deploy", "--yes", *args],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _read_until(stream: object, needle: str, seen: list[str], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    assert hasattr(stream, "readline")
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"never saw {needle!r} in:\n{''.join(seen)}")


def test_a_cut_connection_to_the_leader_resumes_the_release_output(
    three: list[FleetServer], tako_home: Path, tmp_path: Path
) -> None:
    servers = three
    lines = 20
    slow = vars_table(SAMPLE_RELEASE_LINES=str(lines), SAMPLE_RELEASE_PAUSE="0.1")
    cfg = sample_app(tmp_path, servers, release=RELEASE, extra=slow)
    proc = _spawn_deploy(cfg, "--json")
    seen: list[str] = []
    try:
        _read_until(proc.stdout, "migration step 5/", seen)
        servers[0].drop_connections()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    from json import loads

    events = [loads(line) for line in [*seen, *out.splitlines()]]
    output = [e["line"] for e in events if e["event"] == "OutputLine" and e["phase"] == "Release"]
    assert output == [f"migration step {i}/{lines}" for i in range(1, lines + 1)]
    for s in servers:
        assert get(s).startswith("v1 ")


def test_a_second_deploy_is_refused_naming_the_holder(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(3)
    slow = vars_table(SAMPLE_RELEASE_LINES="30", SAMPLE_RELEASE_PAUSE="0.1")
    cfg = sample_app(tmp_path, servers, release=RELEASE, extra=slow)
    first = _spawn_deploy(cfg, "--no-tui")
    try:
        _read_until(first.stderr, "Running release command", [])
        started = time.monotonic()
        second = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
        assert time.monotonic() - started < 15
        assert second.code == 1
        assert "being deployed by" in second.stderr or "held by" in second.stderr
        assert "root@" in second.stderr
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        first.kill()
    for s in servers:
        assert get(s).startswith("v1 ")


def test_ctrl_c_during_the_release_stops_it_and_aborts_everywhere(live: Live) -> None:
    hang = "sh -c 'sleep 120 & echo $! > $TAKO_DATA_DIR/child.pid; wait'"
    cfg = sample_app(live.tmp_path, live.servers, version="v2", release=hang)
    proc = _spawn_deploy(cfg, "--no-tui")
    try:
        _read_until(proc.stderr, "Running release command", [])
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "deploy interrupted" in err
    assert_gone(live.leader_data / "child.pid")
    live.assert_untouched()
    v3 = sample_app(live.tmp_path, live.servers, version="v3", release=RELEASE)
    deploy_ok(v3, live.servers, "v3")  # the leases were released


def test_json_events_tell_the_same_story_as_the_transcript(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    from tako_core.events import from_json
    from tako_core.report import PlainTranscript

    servers = fleet(2)
    cfg = sample_app(tmp_path, servers, release=RELEASE)
    as_json = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    cfg = sample_app(tmp_path, servers, version="v2", release=RELEASE)
    plain = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert as_json.code == plain.code == 0
    transcript = PlainTranscript()
    rendered = [line for e in as_json.events() for line in transcript.lines(from_json(e))]

    def story(lines: list[str]) -> dict[str, list[str]]:
        """Per server, the phase and state words in order (timings and build ids differ between runs)."""
        per: dict[str, list[str]] = {}
        for line in lines:
            words = line.split()
            if len(words) >= 3 and words[1] in (
                "Build",
                "Connect",
                "Upload",
                "Install",
                "Release",
                "Rollout",
                "Finalize",
            ):
                per.setdefault(words[0], []).append(f"{words[1]} {words[2]}")
        return per

    assert story(rendered) == story(plain.stderr.splitlines())
    assert story(rendered)["s2"][:2] == ["Connect running", "Connect done"]
    assert rendered[-1].startswith("deploy succeeded")


async def test_a_full_deploy_under_keep_alive_load_fails_no_request(
    three: list[FleetServer], tako_home: Path, tmp_path: Path
) -> None:
    import asyncio

    from tests.agentkit.kit import Load

    servers = three
    cfg = sample_app(tmp_path, servers, release=RELEASE)
    deploy_ok(cfg, servers, "v1")
    loads = [
        Load(s.http_port, "web.test", address=s.http_host, connections=2, max_seconds=60) for s in servers
    ]
    for load in loads:
        load.start()
    await asyncio.sleep(0.3)
    cfg = sample_app(tmp_path, servers, version="v2", release=RELEASE)
    proc = await asyncio.create_subprocess_exec(
        *TAKO, "deploy", "--no-tui", "--yes", cwd=cfg.parent, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    await asyncio.sleep(0.3)
    for load in loads:
        await load.stop()
    assert proc.returncode == 0, err.decode()
    for s, load in zip(servers, loads, strict=True):
        bodies = [sample.body or "" for sample in load.samples]
        assert load.failed == [], load.errors[:5]
        assert len(bodies) > 50
        assert bodies[0].startswith("v1 ")
        assert bodies[-1].startswith("v2 "), s.name


async def test_two_deploys_with_the_same_holder_still_exclude_each_other(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """A library caller may pass the same holder twice: the lease is per deploy, not per person."""
    import asyncio

    from tako_core.deploy import DeployOptions, deploy
    from tako_core.events import Event
    from tako_tui.commands.frontend import TerminalPrompter
    from tako_tui.commands.options import load_target

    servers = fleet(2)
    slow = vars_table(SAMPLE_RELEASE_LINES="20", SAMPLE_RELEASE_PAUSE="0.1")
    target = load_target(sample_app(tmp_path, servers, release=RELEASE, extra=slow), None)
    releasing = asyncio.Event()

    def first_sink(event: Event) -> None:
        if getattr(event, "detail", "") == "Running release command":
            releasing.set()

    def run(sink: Callable[[Event], None]) -> Awaitable[DeployFinished]:
        options = DeployOptions(holder="ci@runner", confirmed=True)
        return deploy(target, secrets={}, sink=sink, prompter=TerminalPrompter(), options=options)

    first = asyncio.ensure_future(run(first_sink))
    await asyncio.wait_for(releasing.wait(), 30)
    second = await asyncio.wait_for(run(lambda _: None), 30)
    assert second.exit_code == 1
    assert second.error is not None
    assert "being deployed by ci@runner (deploy " in second.error
    assert (await asyncio.wait_for(first, 60)).exit_code == 0
    ran = [what for _, what in timeline(servers[0]) if what == "release-begin"]
    assert ran == ["release-begin"]  # the second deploy never ran the release command


def test_the_build_never_sees_a_secrets_key_and_cannot_print_one(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tako_core.secrets import new_exported_key

    servers = fleet(1)
    key = new_exported_key()
    monkeypatch.setenv("TAKO_SECRETS_KEY_PRODUCTION", key)
    (tmp_path / "found.txt").write_text(key + "\n")  # a copy the build finds elsewhere
    build = f'echo "env=${{TAKO_SECRETS_KEY_PRODUCTION:-none}}"; echo "found $(cat {tmp_path}/found.txt)"'
    cfg = sample_app(tmp_path, servers, extra=f"build = '{build}'\n")
    run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    assert "env=none" in run.stderr
    assert "found ***" in run.stderr
    assert key not in run.stdout + run.stderr


async def test_a_deploy_upgrades_a_stale_agent_that_its_lease_went_to_beside_the_hello(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """The lease and the build question go out right behind the hello, so a stale agent may grant
    the lease before the client knows it is stale: that lease is this deploy's own, not someone
    else's deploy, so the agent is still upgraded (in place), and the lease is let go at the end."""
    import asyncio

    from tako_core.transport import Connection
    from tako_core.transport.agent_setup import inspect_agent, install_agent
    from tako_core.transport.agent_zipapp import build_zipapp
    from tests.agentkit.kit import other_build

    servers = fleet(2)
    cfg = sample_app(tmp_path, servers, release=RELEASE)
    await asyncio.to_thread(deploy_ok, cfg, servers, "v1")
    stale = servers[1]
    async with Connection.open(stale.server) as conn:
        await (await install_agent(conn, other_build(tmp_path), lambda _: None)).close()
        assert not (await inspect_agent(conn, build_zipapp(tmp_path).stem)).current
    pid = stale.agent_pid()

    sample_app(tmp_path, servers, version="v2", release=RELEASE)
    await asyncio.to_thread(deploy_ok, cfg, servers, "v2")
    assert stale.agent_pid() == pid
    async with Connection.open(stale.server) as conn:
        state = await inspect_agent(conn, build_zipapp(tmp_path).stem)
        assert state.current
        assert state.client is not None
        assert [a.lease for a in await state.client.status()] == [None]
        await state.client.close()

        # Stale again, and this time the upgrade fails: the lease it granted beside the hello is let
        # go all the same, so the next deploy is not refused as if this one still ran.
        await (await install_agent(conn, other_build(tmp_path), lambda _: None)).close()
        (stale.root / "bin" / "tako-agent.pyz.tmp").mkdir()
        sample_app(tmp_path, servers, version="v3", release=RELEASE)
        failed = await asyncio.to_thread(tako, "deploy", "--no-tui", "--yes", cwd=cfg.parent)
        assert failed.code == 1
        assert "the agent's zipapp did not arrive whole" in failed.stderr
        client = await conn.agent()
        assert [a.lease for a in await client.status()] == [None]
        await client.close()
