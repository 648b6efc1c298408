"""One error root for everything tako reports to a person.

Every error carries a hint (how to fix it) and the exit code the CLI should use. Front ends render
errors with `render()`; nothing else in tako formats an exception for a user. The hierarchy:

    TakoError                   exit 1: something failed; the message says what, the hint what next
    ├── BadInput                exit 2: the user's input is wrong
    │   ├── ConfigError         ...at a known place: file:line:column
    │   ├── SecretsError        a key is missing or wrong, the secrets file was tampered with
    │   └── SourceSetError      (tako_core.build) the project's files cannot be packed as they are
    ├── TransportError          an SSH connection or transfer failed
    │   └── AgentNotRunning     (tako_core.transport) nothing answers on the agent's socket
    ├── AgentError              the agent refused or failed a request (its client adds subclasses)
    └── DeployFailed            a deploy ran and did not succeed everywhere
        └── BuildFailed         (tako_core.build) the artifact could not be made

Interruption is not an error: a run cancelled by Ctrl-C or the console's abort still reports its
`DeployFinished`, with `interrupted` set and exit code 130 (`EXIT_INTERRUPTED`).
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class TakoError(Exception):
    """A failure tako explains to a person: what is wrong and how to fix it."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class BadInput(TakoError):
    """The user's input (a file, a flag, a value) is wrong; exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """A config file is wrong at a known place."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = Path(path)
        self.line = line
        self.column = column

    @property
    def location(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def render(self) -> str:
        text = f"{self.location}: error: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class SecretsError(BadInput):
    """A secret cannot be read or written: missing key, wrong key, tampered file."""


class TransportError(TakoError):
    """An SSH connection or transfer failed."""


class AgentError(TakoError):
    """The agent on a server refused or failed a request."""


class DeployFailed(TakoError):
    """The deploy ran and did not succeed everywhere."""
