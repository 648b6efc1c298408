"""A booted systemd for the tests: a Debian tree (mmdebstrap) run by `systemd-nspawn -b`.

The tree is built once per package list and cached under CACHE (built aside, then renamed, under a
lock). Each test session boots its own copy, which keeps its state across the session's reboots.
The container shares the host's network namespace, so its sshd listens on ADDRESS at a free port
and every agent in it gets its own HTTP port. It has three login users, all with the pool's client
key: root, `deploy` (passwordless sudo) and `plain` (no sudo).

Never boot systemd as PID 1 in a namespace that shares the host's root filesystem: its tmpfiles
setup would empty the host's /tmp. Here it only ever sees the copy of the tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from tako_core.config import Server
from tako_core.transport.inprocess import known_hosts_line, write_host_key
from tests.fleet import _die_with_parent, _wait_for_banner, free_port

CACHE = Path("/var/cache/tako-tests")
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo", "openssl")
# One address per run: runs at the same time on one machine share the network namespace, and the
# sudo test binds port 80 on it.
ADDRESS = f"127.0.{60 + os.getpid() % 190}.60"
BOOT_TIMEOUT = 90.0
# The host runs no systemd of its own: no machine registration, no scope unit of our own.
_NSPAWN = ("systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--console=read-only")
BUILD_TIMEOUT = 900.0
USERS = ("deploy", "plain")

_SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowStreamLocalForwarding yes
UseDNS no
PrintMotd no
MaxStartups 100
Subsystem sftp internal-sftp
"""


def missing_tools() -> list[str]:
    return [tool for tool in ("mmdebstrap", "systemd-nspawn") if shutil.which(tool) is None]


def cached_tree() -> Path:
    """The pristine tree for PACKAGES, built on first use (~30 s plus the download)."""
    key = hashlib.sha256(f"{SUITE} minbase {','.join(PACKAGES)}".encode()).hexdigest()[:12]
    tree = CACHE / f"debian-{SUITE}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{tree.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if not tree.is_dir():
            partial = tree.with_name(tree.name + ".tmp")
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(
                ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial)],
                check=True,
                capture_output=True,
                timeout=BUILD_TIMEOUT,
            )
            partial.rename(tree)
    return tree


class Container:
    """One booted copy of the cached tree; `reboot()` powers it off and boots it again."""

    def __init__(self, workdir: Path) -> None:
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.identity = workdir / "id_ed25519"
        client_key.write_private_key(self.identity)
        self.identity.chmod(0o600)
        self.known_hosts = workdir / "known_hosts"
        self.tree = workdir / "tree"
        self.log = workdir / "console.log"
        self.address = ADDRESS
        self.port = free_port(ADDRESS)
        self._proc: subprocess.Popen[bytes] | None = None
        subprocess.run(["cp", "-a", "--reflink=auto", str(cached_tree()), str(self.tree)], check=True)
        host_key = self._provision(client_key.export_public_key().decode())
        self.known_hosts.write_text(known_hosts_line(self.address, self.port, host_key))

    def _provision(self, public_key: str) -> asyncssh.SSHKey:
        etc = self.tree / "etc"
        (etc / "hostname").write_text("tako-ct\n")  # mmdebstrap copied the host's; sudo resolves ours
        (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 tako-ct\n")
        (etc / "ssh" / "sshd_config").write_text(_SSHD_CONFIG.format(address=self.address, port=self.port))
        for old in (etc / "ssh").glob("ssh_host_*"):
            old.unlink()
        host_key = write_host_key(etc / "ssh" / "ssh_host_ed25519_key")
        for user in USERS:
            self.chroot("useradd", "--create-home", "--shell", "/bin/bash", user)
            self.chroot("usermod", "--password", "*", user)  # no password, but not locked: keys work
        for home, owner in (("root", "root"), *((f"home/{u}", u) for u in USERS)):
            ssh = self.tree / home / ".ssh"
            ssh.mkdir(mode=0o700, exist_ok=True)
            (ssh / "authorized_keys").write_text(public_key)
            self.chroot("chown", "-R", f"{owner}:{owner}", f"/{home}/.ssh")
        sudoers = etc / "sudoers.d" / "deploy"
        sudoers.write_text("deploy ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        return host_key

    def chroot(self, *command: str) -> None:
        """Run a command in the tree while it is not booted (no init, no services)."""
        subprocess.run(["chroot", str(self.tree), *command], check=True, capture_output=True, timeout=60)

    def boot(self) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*_NSPAWN, "-b", "-D", str(self.tree)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # SIGTERM = an orderly poweroff when pytest dies
            )
        try:
            _wait_for_banner(self.address, self.port, time.monotonic() + BOOT_TIMEOUT, self.running)
        except RuntimeError as err:
            self.poweroff()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the container did not boot: {err}; console:\n{tail}") from None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poweroff(self) -> None:
        """SIGTERM makes nspawn power the container off; bounded, then killed."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def reboot(self) -> None:
        self.poweroff()
        self.boot()

    def ssh(self, user: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `command` in the container as `user`, over its sshd."""
        options = (
            f"-F none -i {self.identity} -p {self.port} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={self.known_hosts} "
            "-o GlobalKnownHostsFile=/dev/null"
        )
        return subprocess.run(
            ["ssh", *options.split(), f"{user}@{self.address}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def server(self, name: str, user: str, root: str, http_port: int | None = None) -> Server:
        """An inventory entry for this container, as `user`, with an agent root of its own."""
        return Server(
            name=name,
            host=self.address,
            port=self.port,
            user=user,
            identity=self.identity,
            known_hosts=self.known_hosts,
            root=root,
            http_port=http_port or free_port(self.address),
            https_port=free_port(self.address),
            http_host=self.address,
        )


def start_container() -> tuple[Container, Path]:
    """A booted container in a fresh work directory (removed by `stop_container`)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob("run-*"):  # left by a session that was killed
        with contextlib.suppress(ValueError):
            if not Path(f"/proc/{int(stale.name.split('-')[1])}").exists():
                shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=CACHE))
    container = Container(workdir)
    container.boot()
    return container, workdir


def stop_container(container: Container, workdir: Path) -> None:
    container.poweroff()
    shutil.rmtree(workdir, ignore_errors=True)
