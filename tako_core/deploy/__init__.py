"""The deploy: the plan, the per-server pipeline, the leader gate, abort and cleanup."""

from tako_core.deploy.pipeline import DeployOptions, deploy, needs_confirmation

__all__ = ["DeployOptions", "deploy", "needs_confirmation"]
