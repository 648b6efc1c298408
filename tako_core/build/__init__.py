"""The artifact: a project's source set, built and packed into one deterministic, cached archive.

Public API: `build_artifact`, `Artifact`, and the errors `BuildFailed`, `SourceSetError`.
Everything else in this package is private to it.
"""

from tako_core.build.artifact import Artifact, build_artifact
from tako_core.build.errors import BuildFailed, SourceSetError

__all__ = ["Artifact", "BuildFailed", "SourceSetError", "build_artifact"]
