"""The agent on a real, booted systemd (tests/container.py): setup as root and through sudo, the
choices for a user without sudo, reboots and a SIGKILLed agent.

Each test uses its own agent root (and so its own unit) in the session's one container."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tako_core.config import Server, add_server
from tako_core.transport.agent_setup import systemd_unit_name
from tests.container import Container
from tests.deploykit import SAMPLE_APP, Run, tako

pytestmark = pytest.mark.systemd

SERVE_AGAIN_TIMEOUT = 60.0


def _deploy(tmp_path: Path, server: Server, version: str = "v1") -> Run:
    app = tmp_path / "app"
    shutil.copytree(SAMPLE_APP, app)
    subprocess.run(["git", "init", "-q"], cwd=app, check=True)
    (app / "VERSION").write_text(version + "\n")
    (app / "tako.toml").write_text(
        'name = "web"\nstart = "python3 app.py"\n\n'
        f'[envs.production]\nroute = "web.test"\nservers = ["{server.name}"]\n'
    )
    return tako("deploy", "--no-tui", "--yes", cwd=app, timeout=180)


def _get(server: Server) -> str:
    """The app's answer through the router; OSError unless it answers 200."""
    conn = http.client.HTTPConnection(server.http_host, server.http_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web.test"})
        response = conn.getresponse()
        body = response.read().decode().strip()
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"{response.status}: {body}")
    return body


def _serves_again(server: Server) -> str:
    """The app's answer once the router serves it again (bounded)."""
    deadline = time.monotonic() + SERVE_AGAIN_TIMEOUT
    while True:
        try:
            return _get(server)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _setup(server: Server, tako_home: Path) -> Run:
    add_server(server, home=tako_home, replace=True)
    return tako("servers", "setup", server.name, cwd=tako_home, timeout=180)


def _setup_and_deploy(server: Server, tako_home: Path, tmp_path: Path) -> None:
    setup = _setup(server, tako_home)
    assert setup.code == 0, setup.stderr
    assert "started the agent (systemd)" in setup.stderr
    deployed = _deploy(tmp_path, server)
    assert deployed.code == 0, deployed.stderr
    assert _get(server).startswith("v1 ")


def _stat(container: Container, fmt: str, *paths: str) -> list[str]:
    return container.ssh("root", f"stat -c '{fmt}' {' '.join(paths)}").stdout.splitlines()


def _agent_pid(container: Container, unit: str) -> int:
    shown = container.ssh("root", f"systemctl show --value -p MainPID {unit}")
    return int(shown.stdout.strip())


def test_setup_as_root_installs_a_unit_and_every_app_serves_again_after_a_reboot(
    container: Container, tako_home: Path, tmp_path: Path
) -> None:
    server = container.server("ct", "root", "/opt/tako")
    _setup_and_deploy(server, tako_home, tmp_path)
    state = container.ssh("root", "systemctl is-enabled tako-agent; systemctl is-active tako-agent")
    assert state.stdout.split() == ["enabled", "active"], state.stderr
    paths = ("/opt/tako/run", "/opt/tako/log", "/opt/tako/log/agent.log", "/opt/tako/run/tako.sock")
    assert _stat(container, "%n %a", *paths) == [
        "/opt/tako/run 700",
        "/opt/tako/log 700",
        "/opt/tako/log/agent.log 600",
        "/opt/tako/run/tako.sock 600",
    ]

    container.reboot()
    assert _serves_again(server).startswith("v1 ")


def _instances(container: Container, root: str) -> list[str]:
    """The pids of the sample app's processes under `root` (other tests' agents share the container)."""
    script = (
        "for p in $(pgrep -f '^python3 app.py'); do "
        f"case $(readlink /proc/$p/cwd) in {root}/*) echo $p;; esac; done"
    )
    return sorted(container.ssh("root", script).stdout.split())


def test_a_sigkilled_agent_is_restarted_by_systemd_and_adopts_its_instances(
    container: Container, tako_home: Path, tmp_path: Path
) -> None:
    server = container.server("ct", "root", "/srv/tako-kill")
    _setup_and_deploy(server, tako_home, tmp_path)
    unit = systemd_unit_name(server.root)
    first, instances = _agent_pid(container, unit), _instances(container, server.root)
    assert len(instances) == 1
    assert container.ssh("root", f"kill -KILL {first}").returncode == 0
    deadline = time.monotonic() + SERVE_AGAIN_TIMEOUT
    while _agent_pid(container, unit) in (0, first):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _serves_again(server).startswith("v1 ")
    assert _instances(container, server.root) == instances  # adopted: no second copy, no port clash

    second = _agent_pid(container, unit)
    restarted = tako("servers", "setup", "--restart", server.name, cwd=tako_home, timeout=180)
    assert restarted.code == 0, restarted.stderr
    assert "restarted the agent in place (systemd)" in restarted.stderr
    assert _get(server).startswith("v1 ")
    assert _agent_pid(container, unit) == second  # in place: the unit's main process execs anew
    assert _instances(container, server.root) == instances


def test_setup_through_sudo_is_the_same_as_for_root(
    container: Container, tako_home: Path, tmp_path: Path
) -> None:
    server = container.server("ct", "deploy", "/srv/tako-sudo", http_port=80)
    _setup_and_deploy(server, tako_home, tmp_path)
    # Root runs the agent; the deploy user may reach its socket, nothing else there (uploads travel
    # over the socket: the agent writes them).
    paths = ("/srv/tako-sudo/run", "/srv/tako-sudo/run/tako.sock", "/srv/tako-sudo/uploads")
    assert _stat(container, "%n %U %a", *paths) == [
        "/srv/tako-sudo/run root 711",
        "/srv/tako-sudo/run/tako.sock deploy 600",
        "/srv/tako-sudo/uploads root 700",
    ]
    state = "/srv/tako-sudo/apps/web/production/state.json"
    listing = container.ssh("deploy", f"ls /srv/tako-sudo/run; cat {state}")
    assert listing.returncode != 0
    assert "Permission denied" in listing.stderr


def test_a_deploy_user_takes_over_a_root_set_up_by_root(
    container: Container, tako_home: Path, tmp_path: Path
) -> None:
    """The deploy user takes over a root that root set up and deployed to: the agent (root either
    way) writes every upload, so uploads/<app>/<env> stays its own and nothing changes hands."""
    first = container.server("ct", "root", "/srv/tako-over")
    _setup_and_deploy(first, tako_home, tmp_path / "1")
    server = container.server("ct", "deploy", "/srv/tako-over", http_port=first.http_port)
    assert _setup(server, tako_home).code == 0
    deployed = _deploy(tmp_path / "2", server, "v2")
    assert deployed.code == 0, deployed.stderr
    assert _get(server).startswith("v2 ")
    uploads = ("/srv/tako-over/uploads/web", "/srv/tako-over/uploads/web/production")
    assert _stat(container, "%n %U %a", *uploads) == [f"{path} root 700" for path in uploads]


def test_a_user_without_sudo_is_told_the_choices_and_can_run_under_its_home(
    container: Container, tako_home: Path, tmp_path: Path
) -> None:
    refused = _setup(container.server("ct", "plain", "/opt/tako-plain"), tako_home)
    assert refused.code == 1
    assert f"plain on ct (plain@{container.address}" in refused.stderr
    assert "may not write /opt/tako-plain and has no passwordless sudo" in refused.stderr
    assert "`echo 'plain ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/tako`" in refused.stderr
    fix = "--user plain --root /home/plain/tako --http-port 8080 --https-port 8443 --replace`"
    assert fix in refused.stderr
    assert "Traceback" not in refused.stderr

    low_port = _setup(container.server("ct", "plain", "/home/plain/tako", http_port=80), tako_home)
    assert low_port.code == 1
    assert f"port 80 on ct (plain@{container.address}" in low_port.stderr
    assert fix in low_port.stderr

    # HTTPS on 443 (the default, as for a server added before HTTPS) needs root: a warning, not an error.
    server = replace(container.server("ct", "plain", "/home/plain/tako"), https_port=443)
    home = _setup(server, tako_home)
    assert home.code == 0, home.stderr
    assert "started the agent (detached)" in home.stderr
    assert "warning: a detached agent does not come back after a reboot" in home.stderr
    assert (
        "warning: port 443 needs root, so this agent serves no HTTPS; for HTTPS: `tako servers add"
        in home.stderr
    )

    add_server(server, home=tako_home, replace=True)
    assert _deploy(tmp_path, server).code == 0
    status = tako("servers", "status", cwd=tmp_path)
    assert "ct    web/production runs as plain (the agent's own user: apps share it)" in status.stderr
