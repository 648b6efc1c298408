"""`tako status`, `tako releases ls` and `tako releases rollback` against real servers."""

from __future__ import annotations

import json
from pathlib import Path

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
