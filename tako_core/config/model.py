"""The config as the rest of tako sees it: frozen values, already validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .tls import OFF, EnvTls, ResolvedTls, TlsSettings


@dataclass(frozen=True)
class Server:
    """One entry of `$TAKO_HOME/servers.toml`. Paths are kept as written; expand `~` when using them."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    root: str = "/opt/tako"
    http_port: int = 80
    https_port: int = 443
    http_host: str = "0.0.0.0"  # address the agent's router binds
    trusted_proxies: tuple[str, ...] = ()  # addresses whose forwarding headers the router keeps


@dataclass(frozen=True)
class Inventory:
    """The servers this machine knows, in file order."""

    servers: dict[str, Server]
    path: Path


@dataclass(frozen=True)
class EnvConfig:
    """One `[envs.<name>]` table as written (nothing inherited yet)."""

    name: str
    routes: tuple[str, ...]
    servers: tuple[str, ...]
    release: str | None  # raw: None when the key is absent, "" when cleared
    instances: int = 1
    tls: EnvTls | None = None  # None: not written ("auto" when the routes allow it)


@dataclass(frozen=True)
class AppConfig:
    """A validated `tako.toml`. `source` is the text it came from, kept to point at lines later."""

    path: Path
    name: str
    preset: str | None
    build: str | None
    install: str | None
    start: str | None
    release: str | None
    release_timeout: float
    health_path: str
    vars: dict[str, str]
    env_vars: dict[str, dict[str, str]]
    envs: dict[str, EnvConfig]
    install_inputs: tuple[str, ...] = ()  # besides the well-known lockfiles
    tls: TlsSettings = field(default_factory=TlsSettings)
    source: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class ResolvedEnv:
    """Everything a deploy of one env needs: servers looked up, release and vars merged."""

    app: str
    env: str
    config_path: Path
    servers: tuple[Server, ...]
    leader: Server
    release: str | None
    release_timeout: float
    vars: dict[str, str]
    build: str | None
    install: str | None
    start: str | None
    health_path: str
    routes: tuple[str, ...]
    instances: int
    install_inputs: tuple[str, ...] = ()
    tls: ResolvedTls = field(default_factory=lambda: ResolvedTls(OFF))
    tls_settings: TlsSettings = field(default_factory=TlsSettings)
