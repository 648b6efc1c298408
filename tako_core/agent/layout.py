"""Where the agent keeps things under its root, and the names it accepts in paths."""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent.accounts import Account, account_name, ensure_account
from tako_core.agent.contract import BAD_REQUEST, ProtocolError

# App, env and build names become path components: no separators, no dot-dot, no hidden names.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ProtocolError(
            BAD_REQUEST,
            f"invalid {kind} name {str(value)[:80]!r}",
            hint="names use letters, digits, '.', '_' and '-', and start with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class Layout:
    root: Path
    app_users: bool = False  # each app/env runs as its own user (an agent running as root)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def lib(self) -> Path:
        """The httptools wheel `tako servers setup` unpacked for this server's python3 (if any)."""
        return self.bin / "lib"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run / "tako.sock"

    @property
    def pid_file(self) -> Path:
        return self.run / "agent.pid"

    @property
    def lock_file(self) -> Path:
        return self.run / "agent.lock"

    @property
    def leases_file(self) -> Path:
        return self.run / "leases.json"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "agent.log"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    @property
    def tls(self) -> Path:
        """The router's certificates and keys (agent/certs.py): the agent user's alone."""
        return self.root / "tls"

    @property
    def acme(self) -> Path:
        """Automatic certificates (agent/autocerts.py): ACME account, per env settings, keys, tokens."""
        return self.root / "acme"

    def app(self, app: str, env: str) -> AppLayout:
        return AppLayout(self.apps / check_name("app", app) / check_name("env", env), self.app_users)

    def create(self, client_user: str | None = None) -> None:
        """The root's directories; `client_user` (the SSH user driving a root agent) may reach the
        socket in run/ (which it cannot list), nothing else: uploads come over the socket (Op.UPLOAD)."""
        for path in (self.bin, self.run, self.log_file.parent, self.uploads, self.apps, self.tls, self.acme):
            path.mkdir(parents=True, exist_ok=True)
        for private in (self.log_file.parent, self.tls, self.acme):
            os.chmod(private, 0o700)
        if self.app_users:  # apps reach their own release, never list the others
            os.chmod(self.root, 0o711)
            os.chmod(self.apps, 0o711)
        # The socket directory and anything holding state are the agent user's alone.
        os.chmod(self.run, 0o711 if client_user else 0o700)
        os.chmod(self.uploads, 0o700)

    def hand_socket(self, client_user: str | None) -> None:
        """The socket (born 0600) belongs to `client_user` when the agent runs for another user."""
        if client_user:
            os.chown(self.socket, *_ids(client_user))


@dataclass(frozen=True)
class AppLayout:
    base: Path
    app_users: bool = False

    @property
    def releases(self) -> Path:
        return self.base / "releases"

    def release(self, build: str) -> Path:
        return self.releases / check_name("build", build)

    @property
    def current(self) -> Path:
        return self.base / "current"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def runs(self) -> Path:
        return self.base / "runs"

    @property
    def installs(self) -> Path:
        """Install outputs shared by the releases with the same dependency inputs (agent/installs.py)."""
        return self.base / "installs"

    @property
    def cache(self) -> Path:
        """Package managers' caches (pip, uv, npm, bun, yarn), kept across releases."""
        return self.base / "cache"

    @property
    def state(self) -> Path:
        return self.base / "state.json"

    @property
    def pipes(self) -> Path:
        """The instances' output FIFOs (the agent's alone; each instance holds its own open)."""
        return self.base / "pipes"

    @property
    def instance_log(self) -> Path:
        return self.base / "instances.log"

    def deployed(self, build: str) -> Path:
        """How `build` was last rolled out (start, vars, secrets): what a rollback to it restores."""
        return self.base / "deployed" / f"{check_name('build', build)}.json"

    def user_name(self) -> str:
        """The user this app/env runs as (named without creating it)."""
        if self.app_users:
            return account_name(self.base.parent.name, self.base.name)
        return pwd.getpwuid(os.geteuid()).pw_name

    def account(self) -> Account | None:
        """The user this app/env runs as; None: the agent's own."""
        return ensure_account(self.base.parent.name, self.base.name) if self.app_users else None

    def create(self) -> Account | None:
        """The app/env's directories; with its own user: releases and installs readable by it (group),
        data and package caches its alone, state, runs and deploy records (secrets) the agent's alone."""
        for path in (self.releases, self.installs, self.data, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        for private in (self.runs, self.base / "deployed"):
            private.mkdir(parents=True, exist_ok=True)
            os.chmod(private, 0o700)
        account = self.account()
        if account is not None:
            for path in (self.base.parent, self.base):
                os.chmod(path, 0o711)
            for shared in (self.releases, self.installs):  # a release links into installs/
                os.chown(shared, 0, account.gid)
                os.chmod(shared, 0o750)
            for own in (self.data, self.cache):
                os.chown(own, account.uid, account.gid)
                os.chmod(own, 0o700)
        return account

    def current_build(self) -> str | None:
        """The build `current` points at, or None."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        return Path(target).name or None


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, readable by the agent's user only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
