"""The wire contract between the client and the agent: framing, error codes, the ops, the messages.

Framing is versioned newline-delimited JSON. Each request is one line
`{"v": 1, "id": N, "op": "...", ...params}`. Each reply line carries the request's id: zero or more
events `{"id": N, "event": "...", ...}`, then exactly one final line, `{"id": N, "ok": true, ...result}`
or `{"id": N, "ok": false, "error": {"code", "message", "hint"}}`.

Every structured result and event is a `Message` defined here once: the agent writes it with
`to_wire()`, the client reads it with `from_wire()`. Reading ignores fields it does not know and
fills defaults for missing ones, so a field added later (always with a default) costs neither an
older client nor an older agent anything. This is the one module both ends import: stdlib only,
Python 3.10.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, TypeVar

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # bytes per line, newline included; longer lines are refused, never buffered
# Output lines inside events are cut to this many characters so an event always fits in MAX_LINE.
MAX_OUTPUT_LINE = 16 * 1024
# Bytes per upload chunk, sent raw right after its request line (`raw`: their count).
UPLOAD_CHUNK = 512 * 1024

# Error codes (the closed set the agent answers with).
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_OP = "unknown_op"
NOT_FOUND = "not_found"
LEASE_HELD = "lease_held"
LEASE_NOT_HELD = "lease_not_held"
BUSY = "busy"
FAILED = "failed"
INTERNAL = "internal"
STALE_BASE = "stale_base"  # prepare: a kept release no longer holds a file the delta left out

Json = dict[str, Any]  # one decoded line


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; `code` is one of the error codes above."""

    def __init__(self, code: str, message: str, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details

    def to_error(self) -> Json:
        error: Json = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.details:
            error["details"] = self.details
        return error


DETACHED = True


class Op(Enum):
    """Every op the agent serves, by its wire name.

    A detached op changes the server and runs to its end even when its client goes away: a rollout
    cut in half would leave a mix of versions behind.
    """

    _value_: str
    detached: bool

    def __new__(cls, name: str, detached: bool = False) -> Op:
        op = object.__new__(cls)
        op._value_ = name
        op.detached = detached
        return op

    @classmethod
    def parse(cls, name: object) -> Op:
        """The op named `name`; ProtocolError(UNKNOWN_OP) for anything else."""
        if isinstance(name, str):
            with contextlib.suppress(ValueError):
                return cls(name)
        raise ProtocolError(UNKNOWN_OP, f"unknown op {str(name)[:80]!r}")

    HELLO = "hello"
    LEASE_ACQUIRE = "lease_acquire"
    LEASE_RENEW = "lease_renew"
    LEASE_RELEASE = "lease_release"
    HAS_RELEASE = "has_release"
    UPLOAD = "upload"
    PREPARE = "prepare", DETACHED
    RELEASE_START = "release_start"
    RELEASE_WATCH = "release_watch"
    RELEASE_STOP = "release_stop"
    CLEANUP = "cleanup", DETACHED
    ROLLOUT = "rollout", DETACHED
    FINALIZE = "finalize", DETACHED
    STATUS = "status"
    RELEASES = "releases"
    ROLLBACK = "rollback", DETACHED
    LOGS = "logs"
    RELEASE_RUNS = "release_runs"
    EXEC = "exec"
    EXEC_INPUT = "exec_input"
    EXEC_RESIZE = "exec_resize"
    CERT_INSTALL = "cert_install"
    CERT_REMOVE = "cert_remove"
    TLS_AUTO = "tls_auto"
    TLS_RENEW = "tls_renew"


M = TypeVar("M", bound="Message")


@dataclass(frozen=True, kw_only=True)
class Message:
    """A structured result or event. Fields are JSON scalars, `tuple[X, ...]`, `X | None` and nested
    messages; none may be named id, ok, error or event (the framing's keys)."""

    def to_wire(self) -> Json:
        return asdict(self)

    @classmethod
    def from_wire(cls: type[M], data: object) -> M:
        """Read what any version of the other end wrote; ProtocolError(BAD_REQUEST) when a field
        without a default is missing or the shape is wrong."""
        if not isinstance(data, dict):
            raise ProtocolError(BAD_REQUEST, f"{cls.__name__} must be a JSON object")
        hints = _hints(cls)
        values: Json = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = _read(hints[f.name], data[f.name], f"{cls.__name__}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(BAD_REQUEST, f"{cls.__name__} lacks {f.name!r}")
        return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of `cls`, looked up once per class."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _read(hint: Any, value: object, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _read(inner, value, where)
    if origin is tuple:  # tuple[X, ...]: a list in JSON
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(BAD_REQUEST, f"{where} must be a list")
        return tuple(_read(args[0], item, where) for item in value)
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint.from_wire(value)
    return value


@dataclass(frozen=True, kw_only=True)
class Done(Message):
    """The result of an op that answers nothing but its success."""


# --- results, by op ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AgentInfo(Message):
    """hello: who the agent is."""

    agent_version: str
    protocol: int
    hostname: str
    python: str
    free_bytes: int
    codecs: tuple[str, ...]  # what the server can unpack: "zst", "gz"
    build_id: str | None = None  # the zipapp's content hash; None when not run from a zipapp
    http_parser: str = ""  # the router's: "httptools" or "h11"; "" from agents that did not say


@dataclass(frozen=True, kw_only=True)
class LeaseInfo(Message):
    """Who deploys an app/env: `started_at` is epoch seconds, `ttl` how long it lives unrenewed."""

    holder: str
    build: str
    started_at: float
    ttl: float


@dataclass(frozen=True, kw_only=True)
class LeaseGranted(Message):
    """lease_acquire."""

    lease: LeaseInfo


@dataclass(frozen=True, kw_only=True)
class ReleaseCheck(Message):
    """has_release: whether the release is there and complete; with `files` asked, which of those
    hashes no kept release holds (None when there is no kept release to build on)."""

    complete: bool
    missing: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class RunStarted(Message):
    """release_start."""

    run_id: str


@dataclass(frozen=True, kw_only=True)
class RunResult(Message):
    """release_watch: how a release run ended: its exit code (None when lost), and whether tako
    ended it."""

    exit_code: int | None
    timed_out: bool
    stopped: bool


@dataclass(frozen=True, kw_only=True)
class Cleaned(Message):
    """cleanup: whether the release was removed, and why not (`kept`)."""

    removed: bool
    kept: str | None = None


@dataclass(frozen=True, kw_only=True)
class Finalized(Message):
    """finalize: the builds pruned."""

    pruned: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class InstanceStatus(Message):
    index: int
    build: str
    port: int
    pid: int | None
    running: bool
    restarts: int
    inflight: int
    started_at: float | None = None  # epoch seconds its current process started


@dataclass(frozen=True, kw_only=True)
class CertificateInfo(Message):
    """cert_install, and in status: an app/env's certificate: its DNS names, issuer, expiry (epoch s)."""

    app: str
    env: str
    names: tuple[str, ...]
    issuer: str
    not_after: float
    serial: str = ""  # hex: tells a renewed certificate from the one before


@dataclass(frozen=True, kw_only=True)
class CertRemoved(Message):
    """cert_remove: whether the env had a certificate to remove."""

    removed: bool


@dataclass(frozen=True, kw_only=True)
class TlsAutoSet(Message):
    """tls_auto: the leader's answers for its followers' tls_auto (empty from a follower): the sync
    `token` (a secret: never shown, logged or sent as an event) and the `pin`, the sha256 (hex) of
    the certificate key's DER SubjectPublicKeyInfo."""

    token: str = field(default="", repr=False)
    pin: str = ""


@dataclass(frozen=True, kw_only=True)
class AutoTlsStatus(Message):
    """In status: an "auto" env's certificate task: `role` "leader" or "follower" (of `leader`, an
    address), `state` "issued" (it serves a certificate for all `names`) or "pending", the last
    attempt's error and when the next attempt is due (epoch seconds)."""

    role: str
    names: tuple[str, ...]
    state: str
    leader: str | None = None
    last_error: str | None = None
    next_attempt: float | None = None


@dataclass(frozen=True, kw_only=True)
class AppStatus(Message):
    app: str
    env: str
    current: str | None
    running: str | None
    routes: tuple[str, ...]
    instances: tuple[InstanceStatus, ...]
    lease: LeaseInfo | None
    user: str  # the Unix user its install, release command and instances run as
    shares_agent_user: bool  # no user of its own: every app runs as the agent's user
    certificate: CertificateInfo | None = None  # the HTTPS certificate its routes are served with
    auto_tls: AutoTlsStatus | None = None  # tls = "auto": how getting the certificate goes


@dataclass(frozen=True, kw_only=True)
class Status(Message):
    """status: every app/env the agent knows."""

    apps: tuple[AppStatus, ...]


@dataclass(frozen=True, kw_only=True)
class ReleaseInfo(Message):
    build: str
    complete: bool
    current: bool
    created_at: float


@dataclass(frozen=True, kw_only=True)
class Releases(Message):
    """releases: newest first."""

    releases: tuple[ReleaseInfo, ...]


@dataclass(frozen=True, kw_only=True)
class LogsEnd(Message):
    """logs (without follow): the cursor after the last line sent, to follow on from."""

    cursor: str


@dataclass(frozen=True, kw_only=True)
class ReleaseRunInfo(Message):
    """One kept release command run: of which build (None for runs from before this was kept), when
    (epoch seconds), and how it ended (None while it runs or when it was lost)."""

    run_id: str
    build: str | None
    started_at: float
    exit_code: int | None
    running: bool


@dataclass(frozen=True, kw_only=True)
class ReleaseRuns(Message):
    """release_runs: newest first."""

    runs: tuple[ReleaseRunInfo, ...]


@dataclass(frozen=True, kw_only=True)
class ExecResult(Message):
    """exec: how the one-off command ended (128 + N when killed by signal N)."""

    exit_code: int


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    NAME: ClassVar[str]


@dataclass(frozen=True, kw_only=True)
class InstallOutput(Event):
    """prepare: one line of the install command's output."""

    NAME = "output"
    line: str


@dataclass(frozen=True, kw_only=True)
class RunOutput(Event):
    """release_watch: one line of the run's log; `offset` is where the next line starts."""

    NAME = "line"
    offset: int
    line: str


@dataclass(frozen=True, kw_only=True)
class LogEntry(Event):
    """logs: one line of instance output: when (epoch seconds), from which `build#instance`, and
    the cursor after it (resume a follow there)."""

    NAME = "log"
    time: float
    source: str
    line: str
    cursor: str


@dataclass(frozen=True, kw_only=True)
class ExecStarted(Event):
    """exec: the command runs; `exec_id` names it to exec_input and exec_resize."""

    NAME = "exec_started"
    exec_id: str
    build: str


@dataclass(frozen=True, kw_only=True)
class ExecOutput(Event):
    """exec: output, masked: whole lines (newline included) without a terminal, chunks with one."""

    NAME = "exec_output"
    data: str


@dataclass(frozen=True, kw_only=True)
class Progress(Event):
    """rollout and rollback: `done` of `total` new instances serve."""

    NAME = "progress"
    done: int
    total: int


# --- framing ----------------------------------------------------------------------------------------


def encode(message: Json) -> bytes:
    """One message as one line (compact JSON, ASCII-safe, newline-terminated)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def decode(line: bytes) -> Json:
    """One line as a JSON object; ProtocolError(BAD_REQUEST/TOO_LARGE) on anything else."""
    if len(line) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"line of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(BAD_REQUEST, f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, "a message must be a JSON object")
    return value


def request(request_id: int, op: Op, params: Json) -> Json:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op.value, **params}


def ok(request_id: Any, result: Message) -> Json:
    return {"id": request_id, "ok": True, **result.to_wire()}


def failure(request_id: Any, error: ProtocolError) -> Json:
    return {"id": request_id, "ok": False, "error": error.to_error()}


def event(request_id: Any, message: Event) -> Json:
    return {"id": request_id, "event": message.NAME, **message.to_wire()}


def clip(line: str) -> str:
    return line if len(line) <= MAX_OUTPUT_LINE else line[:MAX_OUTPUT_LINE] + "…"


def new_run_id(build: str) -> str:
    """A fresh release run id, `run-<time>-<build>-<6 hex>`; the client picks it, so it can send the
    watch right behind the start (`tako logs --release BUILD` finds a run by the build in it)."""
    return f"run-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{build}-{os.urandom(3).hex()}"


def upload_name(app: str, env: str, build: str) -> str:
    """The stem of an uploaded artifact under ROOT/uploads: the client uploads under it (adding the
    codec's suffix), the agent's cleanup of a build removes what it finds under it. One directory
    per app and env, so no two apps' names can meet (`a-b`+`c` and `a`+`b-c` once did)."""
    return f"{app}/{env}/{build}"
