"""One Unix user per app/env (an agent running as root): what each app may reach on the server."""

from __future__ import annotations

import pwd
from pathlib import Path

from tests.deploykit import get, sample_app, tako
from tests.fleet import Fleet, write_app


def _pids_in(directory: Path) -> list[int]:
    """Processes whose working directory is under `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cwd").readlink().is_relative_to(directory):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _owner(pid: int) -> str:
    return pwd.getpwuid(Path(f"/proc/{pid}").stat().st_uid).pw_name


def test_each_app_runs_as_its_own_user_and_reaches_nothing_of_another(fleet: Fleet, tmp_path: Path) -> None:
    (s1,) = fleet(1)
    alpha = sample_app(tmp_path / "alpha", [s1], name="alpha")
    assert tako("deploy", "--no-tui", "--yes", cwd=alpha.parent).code == 0
    assert get(s1, "alpha.test").startswith("v1 ")

    env_dir = s1.root / "apps" / "alpha" / "production"
    probe = (
        f"cat {env_dir}/state.json; ls {env_dir}/data; cat {s1.root}/log/agent.log; "
        f"python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"{s1.root}/run/tako.sock\")'"
        " 2>&1 | tail -1; id -un; touch $TAKO_DATA_DIR/mine && echo data-writable"
    )
    (tmp_path / "beta").mkdir()
    beta = write_app(tmp_path / "beta", [s1], name="beta", release=probe)
    run = tako("deploy", "--no-tui", "--yes", cwd=beta.parent)
    assert run.code == 0, run.stderr
    output = [line.split("| ", 1)[1] for line in run.stderr.splitlines() if line.startswith("s1    | ")]
    assert output == [
        f"cat: {env_dir}/state.json: Permission denied",
        f"ls: cannot open directory '{env_dir}/data': Permission denied",
        f"cat: {s1.root}/log/agent.log: Permission denied",
        "PermissionError: [Errno 13] Permission denied",
        "tako-beta-production",
        "data-writable",
    ]

    # The instances run as their app's user; the data dir is theirs alone, the state the agent's.
    instances = [pid for pid in _pids_in(env_dir / "releases")]
    assert instances
    assert {_owner(pid) for pid in instances} == {"tako-alpha-production"}
    assert (env_dir / "data").stat().st_mode & 0o777 == 0o700
    assert pwd.getpwuid((env_dir / "data").stat().st_uid).pw_name == "tako-alpha-production"
    assert (env_dir / "state.json").stat().st_uid == 0
    assert (env_dir / "state.json").stat().st_mode & 0o777 == 0o600

    status = tako("servers", "status", cwd=tmp_path)
    assert status.code == 0, status.stderr
    assert "s1    alpha/production runs as tako-alpha-production\n" in status.stderr
    assert "s1    beta/production runs as tako-beta-production\n" in status.stderr


def test_a_reused_install_belongs_to_the_apps_user(fleet: Fleet, tmp_path: Path) -> None:
    """The install runs as the app's user, in installs/<key>/ and with a package cache it may write;
    the next release reuses its outputs, which the app's user reaches through the release's link."""
    (s1,) = fleet(1)
    install = "mkdir .deps && id -un > .deps/owner && mkdir -p $PIP_CACHE_DIR && touch $PIP_CACHE_DIR/w"
    extra = f'install = "{install}"\n'
    for version in ("v1", "v2"):
        cfg = sample_app(
            tmp_path, [s1], name="gamma", version=version, release="cat .deps/owner", extra=extra
        )
        (cfg.parent / "requirements.txt").write_text("six\n")
        run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
        assert run.code == 0, run.stderr
        assert "s1    | tako-gamma-production" in run.stderr
    assert "reusing the install" in run.stderr
    assert get(s1, "gamma.test").startswith("v2 ")
    env_dir = s1.root / "apps" / "gamma" / "production"
    assert (env_dir / "cache" / "pip" / "w").stat().st_uid == pwd.getpwnam("tako-gamma-production").pw_uid
