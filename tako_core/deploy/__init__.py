"""The deploy and the rollback, one skeleton (`run`): per-server sessions, the leader gate, abort, cleanup."""

from tako_core.deploy.pipeline import deploy
from tako_core.deploy.rollback import rollback
from tako_core.deploy.run import DeployOptions

__all__ = ["DeployOptions", "deploy", "rollback"]
