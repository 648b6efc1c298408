"""`tako demo`, headless: a local fleet of in-process SSH servers and a sample app deployed to it."""

from tako_core.demo.session import Answer, Demo
from tako_core.demo.workspace import APP, ENV, FAILING_MIGRATION, MIGRATED_SCHEMA, SECRET_NAME

__all__ = ["APP", "ENV", "FAILING_MIGRATION", "MIGRATED_SCHEMA", "SECRET_NAME", "Answer", "Demo"]
