"""The agent's socket under hostile input: it answers every line with an error and keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tako_core.agent import contract
from tako_core.agent.contract import Op
from tests.agentkit.kit import AgentProcess, start_agent

CODES = {
    contract.BAD_REQUEST,
    contract.TOO_LARGE,
    contract.UNSUPPORTED_VERSION,
    contract.UNKNOWN_OP,
    contract.NOT_FOUND,
    contract.LEASE_HELD,
    contract.LEASE_NOT_HELD,
    contract.BUSY,
    contract.FAILED,
}


class Wire:
    """A blocking connection to the agent, one line at a time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def final(self) -> dict[str, Any]:
        """Replies up to the next final one (events skipped); each must be a JSON object."""
        while True:
            line = self.lines.readline()
            assert line.endswith(b"\n"), "the agent closed the connection"
            reply = json.loads(line)
            assert isinstance(reply, dict)
            if "ok" in reply:
                return reply

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    process = start_agent(base / "root", base / "pyz")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def wire(agent: AgentProcess) -> Iterator[Wire]:
    w = Wire(agent.socket)
    yield w
    w.close()


def assert_error(reply: dict[str, Any]) -> None:
    assert reply["ok"] is False
    assert reply["error"]["code"] in CODES
    assert isinstance(reply["error"]["message"], str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["app", "prod", "b1", "", "..", "../x", "a/b", ".hidden", "x" * 200]) | st.text(
    max_size=12
)
OP_NAMES = [op.value for op in Op]
requests = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 0, 2, "1", None, True]),
        "id": st.integers(1, 10**6) | json_values,
        "op": st.sampled_from([*OP_NAMES, "nope", ""]) | json_values,
    },
    optional={
        key: names | json_values
        for key in ("app", "env", "build", "holder", "run_id", "upload", "command", "start", "health_path")
    }
    | {
        key: st.integers(-5, 10**7) | st.floats() | json_values
        for key in ("ttl", "offset", "lines", "keep", "instances", "timeout", "health_timeout")
    }
    | {key: json_values for key in ("vars", "secrets", "routes", "force", "install")},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b and b.strip()))
def test_garbage_lines_get_errors(wire: Wire, raw: bytes) -> None:
    wire.send(raw + b"\n")
    reply = wire.final()
    assert_error(reply)
    assert reply["id"] is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=requests | json_values)
def test_fuzzed_requests_get_answers(wire: Wire, message: Any) -> None:
    wire.send(json.dumps(message).encode() + b"\n")
    reply = wire.final()
    if reply["ok"] is False:
        assert_error(reply)
    else:  # only a well-formed request to a harmless op can succeed
        assert message["v"] == 1
        assert Op(message["op"]) in {
            Op.HELLO,
            Op.STATUS,
            Op.HAS_RELEASE,
            Op.RELEASES,
            Op.LOGS,
            Op.LEASE_ACQUIRE,
            Op.LEASE_RENEW,
            Op.LEASE_RELEASE,
            Op.CLEANUP,
        }


def test_oversized_and_partial_lines(agent: AgentProcess, wire: Wire) -> None:
    wire.send(b'{"v":1,"id":1,"op":"hello","pad":"' + b"x" * (2 * contract.MAX_LINE) + b'"}\n')
    reply = wire.final()
    assert_error(reply)
    assert reply["error"]["code"] == contract.TOO_LARGE
    wire.send(b'{"v":1,"id":7,"op":"hello"}\n')
    reply = wire.final()
    assert reply["id"] == 7
    assert reply["ok"] is True
    # A client that dies mid-line does not take the agent with it.
    other = Wire(agent.socket)
    other.send(b'{"v":1,"id":1,"op":"hel')
    other.close()
    wire.send(b'{"v":1,"id":8,"op":"hello"}\n')
    assert wire.final()["ok"] is True
    assert agent.proc.poll() is None


def test_every_op_of_the_contract_is_served(wire: Wire) -> None:
    for request_id, op in enumerate(Op, 1):
        wire.send(contract.encode(contract.request(request_id, op, {})))
        reply = wire.final()
        assert reply["id"] == request_id
        # Served means answered, or refused for its (missing) parameters: never unknown, never a crash.
        assert reply["ok"] or reply["error"]["code"] == contract.BAD_REQUEST, (op, reply)
