"""One unprivileged Unix user per app/env: its install, release command and instances run as it.

Only an agent running as root switches users; otherwise every app shares the agent's own user
(`tako servers status` says so). Names are deterministic from app and env and fit useradd's 32
characters: `tako-<app>-<env>`, lower-cased, with a hash suffix when cut or changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass

from tako_core.agent.contract import FAILED, ProtocolError

MAX_NAME = 32
_LOCK = "/run/tako-accounts.lock"
# sbin may be missing from the PATH of an agent started by hand.
_USERADD = shutil.which("useradd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "useradd"
PREFIX = "tako-"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account_name(app: str, env: str) -> str:
    wanted = f"{PREFIX}{app}-{env}"
    name = re.sub(r"[^a-z0-9_-]", "-", wanted.lower())
    if name == wanted and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def switches_users() -> bool:
    return os.geteuid() == 0


def ensure_account(app: str, env: str) -> Account | None:
    """The app/env's system user (created on first use), or None when the agent cannot switch users."""
    if not switches_users():
        return None
    name = account_name(app, env)
    # Agents of other roots may create the same user at the same moment; useradd does not take that.
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            created = subprocess.run(
                [_USERADD, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--comment", f"tako app {app}/{env}", name],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if created.returncode != 0:
                raise ProtocolError(
                    FAILED,
                    f"cannot create the user {name} for {app}/{env}: {created.stderr.strip()}",
                    hint="see that useradd works on the server (run as root)",
                ) from None
            entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid)


def chown_tree(top: str, account: Account) -> None:
    """Give a freshly unpacked release to its app's user (symlinks themselves, never their targets)."""
    os.lchown(top, account.uid, account.gid)
    for directory, dirs, files in os.walk(top):
        for entry in (*dirs, *files):
            os.lchown(os.path.join(directory, entry), account.uid, account.gid)
