"""tako.toml and the server inventory: load, validate, resolve per env, edit."""

from .app import load_config
from .inventory import add_server, inventory_path, load_inventory, remove_server, tako_home
from .model import AppConfig, EnvConfig, Inventory, ResolvedEnv, Server
from .resolve import default_env, resolve, resolve_release
from .template import Project, init_config

__all__ = [
    "AppConfig",
    "EnvConfig",
    "Inventory",
    "Project",
    "ResolvedEnv",
    "Server",
    "add_server",
    "default_env",
    "init_config",
    "inventory_path",
    "load_config",
    "load_inventory",
    "remove_server",
    "resolve",
    "resolve_release",
    "tako_home",
]
