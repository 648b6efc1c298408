"""`tako logs` end to end over real sshd: every server's instance output in time order, masked,
and `-f` following it across cut connections without gaps or repeats."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tako_core.secrets import SecretsStore, new_exported_key
from tests.deploykit import TAKO, sample_app, tako
from tests.fleet import Fleet, FleetServer

SECRET = "hunter2-very-secret"


def deployed(tmp_path: Path, servers: list[FleetServer], monkeypatch: pytest.MonkeyPatch, **kw: str) -> Path:
    """The sample app ticking every 50 ms with a secret in its env, deployed to `servers` (again)."""
    extra = '[vars]\nSAMPLE_TICK = "0.05"\n' + kw.pop("extra", "")
    cfg = sample_app(tmp_path, servers, extra=extra, **kw)
    if not (cfg.parent / ".tako" / "secrets.json").exists():  # the first deploy: a key and a secret
        monkeypatch.setenv("TAKO_SECRETS_KEY_PRODUCTION", new_exported_key())
        store = SecretsStore.open(cfg.parent, "web")
        store.set("production", "SAMPLE_SECRET", SECRET)
        store.save()
    run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    return cfg


def test_logs_of_three_servers_in_time_order_masked(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(3)
    cfg = deployed(tmp_path, servers, monkeypatch)
    # 60 lines at 20 ticks a second per server: about 1 s of ticks, however fast `tako logs` starts.
    time.sleep(1.0)

    got = tako("logs", "--json", "-n", "60", cwd=cfg.parent)
    assert got.code == 0, got.stderr
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert len(lines) == 60
    assert {line["server"] for line in lines} == {"s1", "s2", "s3"}
    stamps = [line["time"] for line in lines]
    assert stamps == sorted(stamps)

    everything = tako("logs", "-n", "100000", cwd=cfg.parent)
    assert everything.code == 0, everything.stderr
    assert SECRET not in everything.stdout
    for s in servers:
        assert f"{s.name} | secret is ***" in everything.stdout
        assert f"{s.name} | sample app v1 starting" in everything.stdout

    one = tako("logs", "--server", "s2", "-n", "5", cwd=cfg.parent)
    assert one.code == 0, one.stderr
    assert [line.split(" | ")[0] for line in one.stdout.splitlines()] == ["s2"] * 5

    recent = tako("logs", "--since", "0.001s", "-n", "1000", cwd=cfg.parent)  # only the last moment
    assert recent.code == 0, recent.stderr
    assert "starting" not in recent.stdout

    for bad in (["--server", "nope"], ["--since", "soon"]):
        refused = tako("logs", *bad, cwd=cfg.parent)
        assert refused.code == 2, refused.stderr
        assert "Traceback" not in refused.stderr


def test_logs_name_the_instance_when_there_are_several(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(1)
    cfg = deployed(tmp_path, servers, monkeypatch)
    text = cfg.read_text().replace('servers = ["s1"]', 'servers = ["s1"]\ninstances = 2')
    cfg.write_text(text)
    assert tako("deploy", "--json", "--yes", cwd=cfg.parent).code == 0
    got = tako("logs", "-n", "1000", cwd=cfg.parent)
    assert got.code == 0, got.stderr
    assert "s1#0 | tick" in got.stdout
    assert "s1#1 | tick" in got.stdout


def test_follow_survives_cut_connections_without_gaps_or_repeats(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(2)
    cfg = deployed(tmp_path, servers, monkeypatch)
    follow = subprocess.Popen(
        [*TAKO, "logs", "-f", "--json", "-n", "5"],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    seen: list[dict[str, object]] = []
    assert follow.stdout is not None

    def read(count: int) -> None:
        deadline = time.monotonic() + 60
        for _ in range(count):
            assert time.monotonic() < deadline
            line = follow.stdout.readline()  # type: ignore[union-attr]
            assert line, follow.stderr.read() if follow.stderr else ""
            seen.append(json.loads(line))

    try:
        read(40)
        for cut in range(2):
            assert sum(s.drop_connections() for s in servers) >= 2, cut
            read(60)
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=20)
    assert follow.returncode == 130
    assert "Traceback" not in err

    ticks: dict[str, list[int]] = {}
    for line in seen:
        text = str(line["line"])
        if text.startswith("tick "):
            ticks.setdefault(str(line["server"]), []).append(int(text.split()[1]))
    assert set(ticks) == {"s1", "s2"}
    for server, numbers in ticks.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), server


def test_logs_of_a_server_that_cannot_be_reached(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(2)
    cfg = deployed(tmp_path, servers, monkeypatch)
    servers[1].stop()
    try:
        got = tako("logs", cwd=cfg.parent)
    finally:
        servers[1].start()
    assert got.code == 1
    assert "s1 | " in got.stdout
    assert got.stderr.startswith("s2: cannot connect to s2")
    assert len(got.stderr.splitlines()) == 1


def test_logs_release_shows_a_past_deploys_release_command(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(2)
    builds = []
    for version, lines in (("v1", "2"), ("v2", "4")):
        extra = f'SAMPLE_RELEASE_LINES = "{lines}"\n'
        cfg = deployed(
            tmp_path, servers, monkeypatch, version=version, release="python3 migrate.py", extra=extra
        )
        built = tako("releases", "ls", "--json", cwd=cfg.parent)
        builds.append(next(r["build"] for r in json.loads(built.stdout)["s1"] if r["current"]))
    v1, v2 = builds

    latest = tako("logs", "--release", cwd=cfg.parent)
    assert latest.code == 0, latest.stderr
    assert latest.stdout.splitlines() == [f"s1 | migration step {i}/4" for i in range(1, 5)] + [
        "s1 | using secret ***"
    ]
    assert latest.stderr.startswith(f"release command of {v2} on s1, ")
    assert "exit 0" in latest.stderr

    first = tako("logs", "--release", v1, "--json", cwd=cfg.parent)
    assert first.code == 0, first.stderr
    shown = json.loads(first.stdout)
    assert (shown["server"], shown["build"], shown["exit_code"]) == ("s1", v1, 0)
    assert shown["lines"] == ["migration step 1/2", "migration step 2/2", "using secret ***"]

    missing = tako("logs", "--release", "nope", cwd=cfg.parent)
    assert missing.code == 1
    assert "no server keeps a release command run of build nope" in missing.stderr
