"""The agent through its socket, with real processes: releases, release runs, rollouts, the router."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tako_core.agent.contract import (
    MAX_OUTPUT_LINE,
    UPLOAD_CHUNK,
    Op,
    decode,
    encode,
    new_run_id,
    request,
    upload_name,
)
from tako_core.errors import TransportError
from tako_core.transport import agent_client as client_module
from tako_core.transport.agent_client import AgentClient, AgentReplyError, LeaseHeld, LogEntry, RunResult
from tests.agentkit.kit import START, AgentProcess, Load, get, pack, start_agent
from tests.procs import alive

SECRET = "s3cret-value-xyz"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    base = tmp_path_factory.mktemp("agent")
    process = start_agent(base / "root", base / "pyz")
    yield process
    process.stop()
    assert process.proc.returncode == 0


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[AgentClient]:
    c = await agent.client()
    yield c
    await c.close()


async def ship(
    agent: AgentProcess,
    client: AgentClient,
    app: str,
    build: str,
    *,
    mode: str = "ok",
    install: str | None = None,
    output: list[str] | None = None,
) -> None:
    """Upload and prepare `build` of the sample app (it answers `build`)."""
    pack(agent.root / "uploads" / f"{build}.tar.zst", build, mode)
    sink = output if output is not None else []
    await client.prepare(
        app,
        "prod",
        build,
        f"{build}.tar.zst",
        install=install,
        env_vars={"GREETING": "hi"},
        secrets={"DB_PASSWORD": SECRET},
        on_output=sink.append,
    )


async def roll(
    client: AgentClient,
    app: str,
    build: str,
    health_timeout: float = 30.0,
    *,
    finalize: bool = False,
    release_lease: str | None = None,
) -> list[tuple[int, int]]:
    progress: list[tuple[int, int]] = []
    await client.rollout(
        app,
        "prod",
        build,
        start=START,
        instances=1,
        health_path="/health",
        routes=[f"{app}.test"],
        env_vars={"GREETING": "hi"},
        secrets={"DB_PASSWORD": SECRET},
        on_progress=lambda done, total: progress.append((done, total)),
        health_timeout=health_timeout,
        finalize=finalize,
        release_lease=release_lease,
    )
    return progress


async def release(
    client: AgentClient, app: str, build: str, command: str, limit: float = 30.0
) -> tuple[list[str], RunResult]:
    run_id = await client.release_start(
        app,
        "prod",
        build,
        command,
        env_vars={"GREETING": "hi"},
        secrets={"DB_PASSWORD": SECRET},
        timeout=limit,
    )
    lines: list[str] = []
    result = await client.release_watch(app, "prod", run_id, 0, lambda _offset, line: lines.append(line))
    return lines, result


async def test_hello_and_socket(agent: AgentProcess, client: AgentClient) -> None:
    assert client.info.protocol == 1
    assert set(client.info.codecs) == {"zst", "gz"}
    assert client.info.free_bytes > 0
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600


def test_version_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tako_core.agent", "version"], capture_output=True, text=True, check=True
    ).stdout
    assert out == "0.1.0 1\n"


def test_bridge_gives_up_on_a_socket_nothing_answers(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tako_core.agent", "bridge", str(tmp_path / "none.sock"), "--wait", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no agent answers on" in result.stderr
    assert time.monotonic() - started >= 0.3


async def test_bridge_joins_stdin_and_stdout_to_the_agent(agent: AgentProcess) -> None:
    bridge = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tako_core.agent",
        "bridge",
        str(agent.socket),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert bridge.stdin is not None
    assert bridge.stdout is not None
    client = await AgentClient.connect(bridge.stdout, bridge.stdin)
    assert client.info.protocol == 1
    assert not await client.has_release("bridged", "prod", "b1")
    await client.close()  # its stdin ends: the bridge ends the agent connection and exits
    assert await asyncio.wait_for(bridge.wait(), 10) == 0


async def test_prepare_release_rollout_finalize(agent: AgentProcess, client: AgentClient) -> None:
    assert not await client.has_release("shop", "prod", "b1")
    output: list[str] = []
    await ship(agent, client, "shop", "b1", install="echo installing $GREETING $DB_PASSWORD", output=output)
    assert output == ["installing hi ***"]
    assert await client.has_release("shop", "prod", "b1")
    assert not (agent.root / "uploads" / "b1.tar.zst").exists()

    lines, result = await release(
        client,
        "shop",
        "b1",
        "echo migrating $TAKO_BUILD $ENV; echo pw=$DB_PASSWORD; echo home=$HOME; "
        'test -z "$SSH_AUTH_SOCK$PORT" && echo clean',
    )
    assert lines == ["migrating b1 prod", "pw=***", f"home={agent.root}", "clean"]
    assert result.exit_code == 0
    assert not result.timed_out

    assert await roll(client, "shop", "b1") == [(1, 1)]
    await client.lease_acquire("shop", "prod", "ada", "b1")
    await client.finalize("shop", "prod", "b1", release_lease="bob")  # not bob's: kept
    assert next(s.lease for s in await client.status() if s.app == "shop") is not None
    await client.finalize("shop", "prod", "b1", release_lease="ada")  # the deploy's last step
    assert os.readlink(agent.root / "apps/shop/prod/current") == "releases/b1"
    assert await get(agent.http_port, "shop.test") == (200, "b1")

    [status] = [s for s in await client.status() if s.app == "shop"]
    assert status.current == "b1"
    assert status.running == "b1"
    assert len(status.instances) == 1
    assert status.lease is None
    state = agent.root / "apps/shop/prod/state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    entries: list[LogEntry] = []
    await client.logs("shop", "prod", entries.append, lines=50)
    logs = [e.line for e in entries]
    assert {e.source for e in entries} == {"b1#0"}
    assert any("sample app b1 starting" in line for line in logs)
    assert all(SECRET not in line for line in logs)
    assert any("secret is ***" in line for line in logs)
    assert SECRET not in (agent.root / "log/agent.log").read_text()


async def test_a_rollout_that_finalizes_lets_go_of_the_lease_and_says_when_only_finalizing_failed(
    agent: AgentProcess, client: AgentClient
) -> None:
    await client.lease_acquire("fin", "prod", "ada", "f1")
    await ship(agent, client, "fin", "f1")
    await roll(client, "fin", "f1", finalize=True, release_lease="ada")
    current = agent.root / "apps/fin/prod/current"
    assert os.readlink(current) == "releases/f1"
    assert next(s.lease for s in await client.status() if s.app == "fin") is None

    await ship(agent, client, "fin", "f2")
    current.unlink()
    current.mkdir()  # `current` can no longer be swapped: the rollout succeeds, finalizing fails
    (current / "in-the-way").write_text("")
    with pytest.raises(AgentReplyError) as caught:
        await roll(client, "fin", "f2", finalize=True)
    assert caught.value.details == {"rolled_out": True}
    assert caught.value.message.startswith("rolled out, but finalizing failed:")
    assert await get(agent.http_port, "fin.test") == (200, "f2")


async def test_failed_release_starts_nothing_and_is_cleaned_up(
    agent: AgentProcess, client: AgentClient
) -> None:
    await ship(agent, client, "cart", "c1")
    await roll(client, "cart", "c1")
    await client.finalize("cart", "prod", "c1")

    await ship(agent, client, "cart", "c2")
    lines, result = await release(client, "cart", "c2", "echo boom; exit 1")
    assert lines == ["boom"]
    assert result.exit_code == 1
    assert (agent.root / "apps/cart/prod/releases/.c2.stamps").exists()
    assert await client.cleanup("cart", "prod", "c2")
    assert not (agent.root / "apps/cart/prod/releases/c2").exists()
    assert not (agent.root / "apps/cart/prod/releases/.c2.stamps").exists()
    assert os.readlink(agent.root / "apps/cart/prod/current") == "releases/c1"
    [status] = [s for s in await client.status() if s.app == "cart"]
    assert [i.build for i in status.instances] == ["c1"]
    assert await get(agent.http_port, "cart.test") == (200, "c1")
    assert not await client.cleanup("cart", "prod", "c1")  # current: kept, and not an error
    assert (agent.root / "apps/cart/prod/releases/c1/.complete").exists()


def _live_in_group(pgid: int) -> list[int]:
    live = []
    for entry in os.listdir("/proc"):
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            live.append(int(entry))
    return live


async def test_release_timeout_kills_the_whole_group(agent: AgentProcess, client: AgentClient) -> None:
    await ship(agent, client, "slow", "s1")
    pidfile = agent.root / "apps/slow/prod/data/child.pid"
    # A child that ignores SIGTERM and keeps starting grandchildren, behind a parent that just sleeps.
    command = (
        "sh -c 'trap \"\" TERM; echo $$ > $TAKO_DATA_DIR/child.pid; while :; do sleep 1; done' & "
        "echo started; sleep 60"
    )
    started = time.monotonic()
    lines, result = await release(client, "slow", "s1", command, limit=1.0)
    assert lines == ["started"]
    assert result.timed_out
    assert result.exit_code != 0
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    pgid = os.getpgid(child) if alive(child) else None
    assert pgid is None or not _live_in_group(pgid)
    assert not alive(child)


async def test_watcher_reattaches_from_its_offset(agent: AgentProcess) -> None:
    first = await agent.client()
    await ship(agent, first, "feed", "f1")
    run_id = await first.release_start(
        "feed",
        "prod",
        "f1",
        "for i in $(seq 1 40); do echo line $i; sleep 0.02; done; exit 3",
        env_vars={},
        secrets={},
        timeout=30,
    )
    seen: list[tuple[int, str]] = []
    watching = asyncio.ensure_future(
        first.release_watch("feed", "prod", run_id, 0, lambda o, line: seen.append((o, line)))
    )
    for _ in range(200):
        if len(seen) >= 5:
            break
        await asyncio.sleep(0.01)
    await first.close()  # the connection drops mid-run
    with pytest.raises(TransportError):  # what a deploy catches to reconnect and re-attach
        await watching
    offset = seen[-1][0]
    second = await agent.client()
    result = await second.release_watch(
        "feed", "prod", run_id, offset, lambda o, line: seen.append((o, line))
    )
    await second.close()
    assert [line for _, line in seen] == [f"line {i}" for i in range(1, 41)]
    assert result.exit_code == 3
    assert not result.timed_out


async def test_a_rollout_runs_to_its_end_when_its_client_goes_away(agent: AgentProcess) -> None:
    assert Op.ROLLOUT.detached  # what the agent's server reads: a half rollout would mix versions
    first = await agent.client()
    await ship(agent, first, "gone", "g1")
    rolling = asyncio.ensure_future(
        first.rollout(
            "gone",
            "prod",
            "g1",
            start=f"echo booting; sleep 1; {START}",
            instances=1,
            health_path="/health",
            routes=["gone.test"],
            env_vars={},
            secrets={},
            on_progress=lambda _done, _total: None,
        )
    )
    log = agent.root / "apps/gone/prod/instances.log"
    for _ in range(500):
        if log.exists() and "booting" in log.read_text():
            break
        await asyncio.sleep(0.01)
    await first.close()  # while the new instance boots
    with pytest.raises(TransportError):
        await rolling
    second = await agent.client()
    try:
        for _ in range(300):
            [status] = [s for s in await second.status() if s.app == "gone"]
            if status.running:
                break
            await asyncio.sleep(0.05)
    finally:
        await second.close()
    assert status.running == "g1"
    assert await get(agent.http_port, "gone.test") == (200, "g1")


async def test_unhealthy_build_keeps_the_old_one_serving_under_load(
    agent: AgentProcess, client: AgentClient
) -> None:
    await ship(agent, client, "web", "w1")
    await roll(client, "web", "w1")
    await ship(agent, client, "web", "w2", mode="unhealthy")
    load = Load(agent.http_port, "web.test", max_seconds=20)
    load.start()
    await asyncio.sleep(0.3)
    attempt = asyncio.ensure_future(roll(client, "web", "w2", health_timeout=2.0))
    await asyncio.sleep(0.5)
    with pytest.raises(AgentReplyError) as busy:  # one change at a time per app/env
        await client.finalize("web", "prod", "w1")
    assert busy.value.code == "busy"
    with pytest.raises(AgentReplyError) as failure:
        await attempt
    await asyncio.sleep(0.3)
    await load.stop()
    assert "did not answer /health" in failure.value.message
    assert "sample app w2 starting" in failure.value.message  # the instance's last lines
    assert SECRET not in failure.value.message
    assert not load.failed, load.errors[:5]
    assert len(load.samples) > 100
    assert {s.body for s in load.samples} == {"w1"}
    [status] = [s for s in await client.status() if s.app == "web"]
    assert [i.build for i in status.instances] == ["w1"]


async def test_good_rollout_under_load_switches_every_request(
    agent: AgentProcess, client: AgentClient
) -> None:
    await ship(agent, client, "api", "a1")
    await roll(client, "api", "a1")
    await ship(agent, client, "api", "a2")
    load = Load(agent.http_port, "api.test", max_seconds=20)
    load.start()
    await asyncio.sleep(0.3)
    await roll(client, "api", "a2")
    switched = time.monotonic()
    await asyncio.sleep(0.3)
    await load.stop()
    assert not load.failed, load.errors[:5]
    assert {s.body for s in load.samples if s.sent > switched} == {"a2"}
    answers = [s.body for s in load.samples]
    assert answers.count("a1") > 20  # the load really ran through the switch
    assert answers.count("a2") > 20
    for connection in range(load.connections):  # per connection: old answers, then only new ones
        bodies = [s.body or "" for s in load.samples if s.connection == connection]
        assert bodies == sorted(bodies)


async def test_leases(client: AgentClient) -> None:
    await client.lease_acquire("lease", "prod", "ann@laptop", "(building)", ttl=1.0)
    await client.lease_acquire("lease", "prod", "ann@laptop", "b1", ttl=1.0)  # the holder may update it
    with pytest.raises(LeaseHeld) as held:
        await client.lease_acquire("lease", "prod", "bob@ci", "b2")
    assert held.value.holder == "ann@laptop"
    assert held.value.build == "b1"
    assert "ann@laptop" in held.value.message
    await client.lease_renew("lease", "prod", "ann@laptop")
    with pytest.raises(AgentReplyError):
        await client.lease_renew("lease", "prod", "bob@ci")
    await client.lease_acquire("lease", "prod", "bob@ci", "b2", force=True)  # --force-unlock
    await asyncio.sleep(1.1)  # bob's ttl is 30 s, but a new holder may take an expired one only
    with pytest.raises(LeaseHeld):
        await client.lease_acquire("lease", "prod", "ann@laptop", "b3")
    await client.lease_release("lease", "prod", "bob@ci")
    await client.lease_acquire("lease", "prod", "ann@laptop", "b3", ttl=1.0)
    await asyncio.sleep(1.1)
    await client.lease_acquire("lease", "prod", "bob@ci", "b4")  # ann stopped renewing: expired


async def test_finalize_prunes_but_keeps_current_and_previous(
    agent: AgentProcess, client: AgentClient
) -> None:
    for build in ("p1", "p2", "p3"):
        await ship(agent, client, "prune", build)
    await roll(client, "prune", "p1")
    for build in ("p1", "p2"):
        await client.finalize("prune", "prod", build)
    pruned = await client.finalize("prune", "prod", "p3", keep=1)
    # p1 still runs (no rollout since), p2 is previous: nothing may go.
    assert pruned == []
    assert {r.build for r in await client.releases("prune", "prod")} == {"p1", "p2", "p3"}
    await client.rollback("prune", "prod", "p2")
    assert os.readlink(agent.root / "apps/prune/prod/current") == "releases/p2"
    assert await get(agent.http_port, "prune.test") == (200, "p2")

    await ship(agent, client, "prune", "p4")
    await roll(client, "prune", "p4")
    # Newest first: p4 is kept and current, p2 was current before (the rollback target): both stay.
    assert await client.finalize("prune", "prod", "p4", keep=1) == ["p3", "p1"]
    assert [r.build for r in await client.releases("prune", "prod")] == ["p4", "p2"]
    # Each release's stat record (agent/stamps.py) goes with it.
    records = {p.name for p in (agent.root / "apps/prune/prod/releases").glob(".*.stamps")}
    assert records == {".p4.stamps", ".p2.stamps"}


async def test_release_stop_kills_the_group(agent: AgentProcess, client: AgentClient) -> None:
    await ship(agent, client, "halt", "h1")
    run_id = await client.release_start(
        "halt", "prod", "h1", "echo go; sleep 30 & sleep 30", env_vars={}, secrets={}, timeout=60
    )
    lines: list[str] = []
    watching = asyncio.ensure_future(
        client.release_watch("halt", "prod", run_id, 0, lambda _o, line: lines.append(line))
    )
    for _ in range(200):
        if lines:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await client.release_stop("halt", "prod", run_id)
    result = await watching
    assert time.monotonic() - started < 3
    assert result.stopped
    assert not result.timed_out
    assert lines == ["go"]


async def test_prepare_refuses_unsafe_archives_and_reports_failed_installs(
    agent: AgentProcess, client: AgentClient
) -> None:
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (agent.root / "uploads/e1.tar.gz").write_bytes(evil.getvalue())
    with pytest.raises(AgentReplyError, match="unsafe path in the archive"):
        await client.prepare(
            "evil", "prod", "e1", "e1.tar.gz", install=None, env_vars={}, secrets={}, on_output=lambda _: None
        )
    assert not list(agent.root.rglob("escaped.txt"))
    assert not list((agent.root / "apps/evil/prod/releases").iterdir())

    with pytest.raises(AgentReplyError, match="not in"):
        await client.prepare(
            "evil",
            "prod",
            "e2",
            "../run/tako.sock",
            install=None,
            env_vars={},
            secrets={},
            on_output=lambda _: None,
        )

    output: list[str] = []
    with pytest.raises(AgentReplyError) as failed:
        await ship(agent, client, "evil", "e3", install="echo one; echo $DB_PASSWORD; exit 4", output=output)
    assert output == ["one", "***"]
    assert "install exited with 4" in failed.value.message
    assert "one" in failed.value.message
    assert SECRET not in failed.value.message
    assert not await client.has_release("evil", "prod", "e3")


async def test_a_long_log_arrives_whole_in_batches(agent: AgentProcess, client: AgentClient) -> None:
    await ship(agent, client, "chatty", "c1")
    lines, result = await release(client, "chatty", "c1", "seq 1 3000; printf 'no newline at the end'")
    assert lines == [str(i) for i in range(1, 3001)] + ["no newline at the end"]
    assert result.exit_code == 0


async def test_an_instance_that_exits_fails_the_rollout_at_once(
    agent: AgentProcess, client: AgentClient
) -> None:
    await ship(agent, client, "crashy", "x1", mode="crash")
    started = time.monotonic()
    with pytest.raises(AgentReplyError) as failure:
        await roll(client, "crashy", "x1")
    assert time.monotonic() - started < 5  # not the 30 s health timeout
    assert "exited with 3" in failure.value.message
    assert "secret is ***" in failure.value.message
    [status] = [s for s in await client.status() if s.app == "crashy"]
    assert status.instances == ()
    assert status.running is None


async def test_a_silent_socket_is_not_an_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "HELLO_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_unix_server(lambda _r, w: held.append(w), path=str(tmp_path / "s.sock"))
    try:
        with pytest.raises(TransportError, match="did not answer hello"):
            await AgentClient.open_unix(tmp_path / "s.sock")
    finally:
        server.close()
        for writer in held:
            writer.close()


async def test_cleanup_stops_a_prepare_still_running_for_its_build(agent: AgentProcess) -> None:
    """An aborting client cleans up while the agent still installs that build: nothing may survive."""
    installing, cleaning = await agent.client(), await agent.client()
    try:
        upload = f"{upload_name('race', 'prod', 'r1')}.tar.zst"
        pack(agent.root / "uploads" / upload, "r1")
        pid_file = agent.root / "install.pid"
        install = f"echo $$ > {pid_file}; exec sleep 60"
        preparing = asyncio.ensure_future(
            installing.prepare(
                "race",
                "prod",
                "r1",
                upload,
                install=install,
                env_vars={},
                secrets={},
                on_output=lambda _: None,
            )
        )
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
        started = time.monotonic()
        await cleaning.cleanup("race", "prod", "r1")
        assert time.monotonic() - started < 10
        with pytest.raises(AgentReplyError, match="stopped by a cleanup"):
            await preparing
        assert not (agent.root / "apps/race/prod/releases/r1").exists()
        assert not list((agent.root / "uploads").glob(f"{upload_name('race', 'prod', 'r1')}.*"))
        install_pid = int(pid_file.read_text())
        assert not os.path.exists(f"/proc/{install_pid}")
    finally:
        await installing.close()
        await cleaning.close()


async def test_upload_over_the_agent_channel(
    agent: AgentProcess, client: AgentClient, tmp_path: Path
) -> None:
    """Chunks pipelined over the socket; the file appears whole, under its name, only at the end."""
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * UPLOAD_CHUNK + 17))
    uploads = agent.root / "uploads" / "up" / "prod"  # one directory per app and env, the agent's
    uploads.mkdir(parents=True)
    (uploads / "big.bin.part").write_bytes(b"x" * (5 * UPLOAD_CHUNK))  # left by a cut upload
    progress: list[tuple[int, int]] = []
    await (await client.upload("up/prod/big.bin", local, lambda done, total: progress.append((done, total))))
    assert (uploads / "big.bin").read_bytes() == local.read_bytes()
    assert not (uploads / "big.bin.part").exists()
    size = local.stat().st_size
    assert progress == [(min(n * UPLOAD_CHUNK, size), size) for n in range(1, 5)]

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    progress.clear()
    await (await client.upload("up/prod/empty", empty, lambda done, total: progress.append((done, total))))
    assert (uploads / "empty").read_bytes() == b""
    assert progress == [(0, 0)]

    # Uploaded, then prepared: the deploy's path.
    artifact = pack(tmp_path / "u1.tar.zst", "u1")
    name = upload_name("up", "prod", "u1") + ".tar.zst"
    await client.upload(name, artifact, lambda _done, _total: None)
    await client.prepare(  # sent behind the last chunk, before its acknowledgement
        "up", "prod", "u1", name, install=None, env_vars={}, secrets={}, on_output=print
    )
    assert (agent.root / "apps/up/prod/releases/u1/version.txt").read_text() == "u1\n"


def _chunk_reply(agent: AgentProcess, params: dict[str, object], payload: bytes) -> list[dict[str, object]]:
    """Every reply line to one upload request (its line, then `payload`), until the agent hangs up
    or 2 s pass."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(agent.socket))
        sock.sendall(encode(request(1, Op.UPLOAD, params)) + payload)
        replies = []
        with sock.makefile("rb") as lines, contextlib.suppress(TimeoutError):
            while line := lines.readline():
                replies.append(decode(line))
        return replies


@pytest.mark.parametrize(
    ("name", "payload", "size", "error"),
    [
        ("../escape", b"", None, "must be <app>/<env>/<file name>"),
        ("a/b", b"", None, "must be <app>/<env>/<file name>"),
        ("a/b/.hidden", b"", None, "must be <app>/<env>/<file name>"),
        ("a/b/c/d", b"", None, "must be <app>/<env>/<file name>"),
        ("../b/escape", b"", None, "invalid app name"),
        ("a/../escape", b"", None, "invalid env name"),
        ("a/b/short.bin", b"hello", 10, "incomplete: 5 of 10 bytes"),
    ],
)
async def test_upload_refuses_bad_chunks(
    agent: AgentProcess, client: AgentClient, name: str, payload: bytes, size: int | None, error: str
) -> None:
    params = {"name": name, "offset": 0, "raw": len(payload), **({"size": size} if size is not None else {})}
    [reply] = _chunk_reply(agent, params, payload)
    assert reply["ok"] is False
    assert error in str(reply["error"])
    assert not (agent.root / "escape").exists()
    assert not (agent.root / "uploads" / "escape").exists()
    assert not (agent.root / "uploads" / "a" / "b" / "short.bin").exists()


async def test_a_chunk_of_unusable_length_ends_the_conversation(agent: AgentProcess) -> None:
    """Its bytes would be read as requests: the agent answers once and hangs up."""
    smuggled = encode(request(2, Op.HELLO, {}))
    for raw in (UPLOAD_CHUNK + 1, -1, "5"):
        replies = _chunk_reply(agent, {"name": "x.bin", "offset": 0, "raw": raw}, smuggled)
        assert [r["ok"] for r in replies] == [False]
        assert "raw must be 0 to" in str(replies[0]["error"])
    # Without `raw` nothing follows the line: an error, and the next request is served.
    replies = _chunk_reply(agent, {"name": "x.bin", "offset": 0}, smuggled)
    assert [r["ok"] for r in replies] == [False, True]
    assert "parameter 'raw'" in str(replies[0]["error"])


async def test_a_watch_sent_right_behind_the_start_of_its_run(
    agent: AgentProcess, client: AgentClient
) -> None:
    """The client picks the run's id, so the watch need not wait for the start's reply."""
    await ship(agent, client, "gate", "g1")
    run_id = new_run_id("g1")
    lines: list[str] = []
    start = client.release_start(
        "gate", "prod", "g1", "echo one; echo two", env_vars={}, secrets={}, timeout=30, run_id=run_id
    )
    watch = client.release_watch("gate", "prod", run_id, 0, lambda _offset, line: lines.append(line))
    started, result = await asyncio.gather(start, watch)
    assert started == run_id
    assert (lines, result.exit_code) == (["one", "two"], 0)
    bad_ids = ((run_id, "exists already"), ("../x", "invalid run name"), (new_run_id("g2"), "does not name"))
    for bad, error in bad_ids:
        with pytest.raises(AgentReplyError, match=error):
            await client.release_start(
                "gate", "prod", "g1", "true", env_vars={}, secrets={}, timeout=30, run_id=bad
            )


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../escape.txt", "bad_request"),
        ("/tmp/abs.txt", "bad_request"),
        ("a/../../x", "bad_request"),
        ("sub/./x", "bad_request"),
        ("lnk/copied.txt", "bad_request"),  # lnk -> sub stays inside, yet a path through a link
        ("version.txt", "bad_request"),  # in the delta archive already
        ("unlisted.txt", "bad_request"),  # not in the delta's manifest
        ("copied.txt", "stale_base"),
    ],
)
async def test_a_delta_assembly_checks_every_base_path(
    agent: AgentProcess, client: AgentClient, tmp_path: Path, path: str, code: str
) -> None:
    """A base file gets the extraction's checks, and must be in the manifest with the hash the base
    gives (cut short); one no kept release holds refuses the assembly."""
    await ship(agent, client, "delta", "d1")  # a kept release to copy from
    await roll(client, "delta", "d1")
    await client.finalize("delta", "prod", "d1")
    upload = upload_name("delta", "prod", "d2") + ".tar.gz"
    (agent.root / "uploads" / upload).parent.mkdir(parents=True, exist_ok=True)
    listed = {} if path == "unlisted.txt" else {path: "0" * 64}
    manifest = json.dumps({"files": listed}).encode()
    with tarfile.open(agent.root / "uploads" / upload, "w:gz") as tar:
        info = tarfile.TarInfo(".tako-manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        members = (("version.txt", tarfile.REGTYPE), ("sub", tarfile.DIRTYPE), ("lnk", tarfile.SYMTYPE))
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, 0o755, "sub" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(AgentReplyError) as refused:
        await client.prepare(
            "delta",
            "prod",
            "d2",
            upload,
            install=None,
            env_vars={},
            secrets={},
            on_output=print,
            base={path: ("0" * 16, 0o644)},
        )
    assert refused.value.code == code, refused.value
    assert not (agent.root / "apps/delta/prod/releases/d2").exists()
    assert not (agent.root / "escape.txt").exists()
    assert not list((agent.root / "apps/delta/prod/releases").glob(".tmp-*"))


PEM = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END KEY-----"


async def test_multi_line_secrets_and_secrets_across_a_cut_are_masked(
    agent: AgentProcess, client: AgentClient
) -> None:
    await ship(agent, client, "pem", "p1")
    # The secret straddles the 16 KiB cut of an overlong line, in output and in the stored run log.
    pad = MAX_OUTPUT_LINE - len(SECRET) // 2
    run_id = await client.release_start(
        "pem",
        "prod",
        "p1",
        f'printf "%s\\n" "$KEY"; head -c {pad} /dev/zero | tr "\\0" x; echo "$PW"',
        env_vars={},
        secrets={"KEY": PEM, "PW": SECRET},
        timeout=30,
    )
    lines: list[str] = []
    await client.release_watch("pem", "prod", run_id, 0, lambda _offset, line: lines.append(line))
    text = "\n".join(lines)
    assert "MIIEvQ" not in text
    assert "AQEFAA" not in text
    assert "".join(lines).count("***") >= 3
    assert "s3cret" not in "".join(lines)
    assert "xyz" not in "".join(lines)
    stored = b"".join(p.read_bytes() for p in (agent.root / "apps/pem/prod/runs").rglob("*") if p.is_file())
    assert b"MIIEvQ" not in stored
    assert b"s3cret" not in stored
    assert b"xyz" not in stored
