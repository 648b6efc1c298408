"""What can go wrong while making an artifact, in words a person can act on."""

from __future__ import annotations

from tako_core.errors import BadInput, DeployFailed


class BuildFailed(DeployFailed):
    """The artifact could not be made: the build command failed, git or the disk refused.

    `returncode` is the build command's exit status (negative: killed by that signal), None when
    the failure was not the command's. It is not `exit_code`, which is the CLI's exit status.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        returncode: int | None = None,
        last_lines: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.last_lines = last_lines


class SourceSetError(BadInput):
    """The project's files cannot be packed as they are (a symlink leaving the tree, an unreadable file)."""
