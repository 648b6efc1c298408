"""The `build` command: live output, its environment, failure, and abort (real `sh` processes)."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from tako_core.build import Artifact, BuildFailed, build_artifact
from tako_core.build.command import MAX_LINE
from tako_core.mask import Masker
from tests.procs import alive


def members(artifact: Artifact) -> set[str]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(artifact.path.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return set(tar.getnames())


def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    (root / "app.py").write_text("print()\n")
    (root / ".gitignore").write_text("*.tmp\n")
    return root


async def test_output_streams_line_by_line_and_outputs_are_packed(tmp_path: Path) -> None:
    root = project(tmp_path)
    lines: list[str] = []
    command = (
        "echo one; echo two >&2; printf 'crlf\\r\\n'; "
        'echo "vars=$MODE env=$ENV build=$TAKO_BUILD"; '
        "mkdir -p dist && echo bundle > dist/app.js && echo scratch > x.tmp; "
        "printf 'no newline at the end'"
    )
    artifact = await build_artifact(
        root, "web", "prod", command, {"MODE": "fast"}, lines.append, tmp_path / "c"
    )
    assert lines == [
        "one",
        "two",
        "crlf",
        f"vars=fast env=prod build={artifact.build}",
        "no newline at the end",
    ]
    assert {"dist", "dist/app.js", "app.py"} <= members(artifact)
    assert "x.tmp" not in members(artifact)  # what the build writes still obeys .gitignore


async def test_output_arrives_while_the_command_runs(tmp_path: Path) -> None:
    root = project(tmp_path)
    # The command only says "done" if the test saw "ready" (and answered) while it was still running.
    command = (
        "echo ready; i=0; while [ ! -e go.tmp ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
        "[ -e go.tmp ] && echo done"
    )
    lines: list[str] = []

    def on_output(line: str) -> None:
        lines.append(line)
        if line == "ready":
            (root / "go.tmp").touch()

    await build_artifact(root, "web", "prod", command, {}, on_output, tmp_path / "c")
    assert lines == ["ready", "done"]


async def test_very_long_lines_arrive_in_pieces(tmp_path: Path) -> None:
    root = project(tmp_path)
    lines: list[str] = []
    length = MAX_LINE * 2 + 10
    await build_artifact(
        root,
        "web",
        "prod",
        f"head -c {length} /dev/zero | tr '\\0' x; echo; echo after",
        {},
        lines.append,
        tmp_path / "c",
    )
    assert lines[-1] == "after"
    assert "".join(lines[:-1]) == "x" * length
    assert all(len(line) <= MAX_LINE for line in lines)


async def test_failure_raises_with_exit_code_and_last_lines(tmp_path: Path) -> None:
    root = project(tmp_path)
    lines: list[str] = []
    command = "for i in $(seq 1 30); do echo line $i; done; echo 'boom: missing module' >&2; exit 3"
    with pytest.raises(BuildFailed) as caught:
        await build_artifact(root, "web", "prod", command, {}, lines.append, tmp_path / "c")
    error = caught.value
    assert error.returncode == 3
    assert error.exit_code == 1  # the CLI's exit code for a failed deploy, not the command's
    assert len(lines) == 31
    assert error.last_lines[-1] == "boom: missing module"
    assert len(error.last_lines) == 20
    assert "exited with code 3" in error.message
    assert "boom: missing module" in error.message
    assert error.hint
    assert command in error.hint
    assert not (tmp_path / "c").exists()  # nothing packed


async def test_missing_program_fails_like_a_shell(tmp_path: Path) -> None:
    root = project(tmp_path)
    with pytest.raises(BuildFailed) as caught:
        await build_artifact(
            root, "web", "prod", "no-such-tool-xyz --build", {}, lambda _: None, tmp_path / "c"
        )
    assert caught.value.returncode == 127
    assert "not found" in caught.value.message


async def test_cached_artifact_still_runs_the_command(tmp_path: Path) -> None:
    root = project(tmp_path)
    lines: list[str] = []
    first = await build_artifact(root, "web", "prod", "echo built", {}, lines.append, tmp_path / "c")
    second = await build_artifact(root, "web", "prod", "echo built", {}, lines.append, tmp_path / "c")
    assert lines == ["built", "built"]
    assert not first.cached
    assert second.cached
    assert second.path == first.path


async def test_cancelling_kills_the_whole_process_group(tmp_path: Path) -> None:
    root = project(tmp_path)
    started = asyncio.Event()

    def on_output(line: str) -> None:
        if line == "started":
            started.set()

    command = "sleep 60 & echo $! > child.tmp; echo started; wait"
    task = asyncio.create_task(build_artifact(root, "web", "prod", command, {}, on_output, tmp_path / "c"))
    await asyncio.wait_for(started.wait(), 10)
    child = int((root / "child.tmp").read_text())
    assert alive(child)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(250):  # up to 5 s for the kernel to finish it off
        if not alive(child):
            break
        await asyncio.sleep(0.02)
    assert not alive(child)
    assert not (tmp_path / "c").exists()


async def test_build_env_has_caller_env_and_no_surprises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path)
    monkeypatch.setenv("FROM_CALLER", "yes")
    lines: list[str] = []
    await build_artifact(
        root,
        "web",
        "staging",
        'echo "$FROM_CALLER $ENV $A"; pwd',
        {"A": "1", "ENV": "ignored"},
        lines.append,
        tmp_path / "c",
    )
    # ENV is the deploy's env name even when [vars] tries to set it; cwd is the project directory.
    assert lines == ["yes staging 1", os.fspath(root.resolve())]


async def test_the_build_never_sees_a_secrets_key_and_its_output_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path)
    key = "tk1-secretkeymaterial-0123456789"
    monkeypatch.setenv("TAKO_SECRETS_KEY_PROD", key)
    lines: list[str] = []
    masker = Masker(["pw-across-the-cut"])
    command = (
        'echo "key=${TAKO_SECRETS_KEY_PROD:-none}"; '
        f'head -c {MAX_LINE - 5} /dev/zero | tr "\\0" x; echo pw-across-the-cut'
    )
    await build_artifact(root, "web", "prod", command, {}, lines.append, tmp_path / "c", masker=masker)
    assert lines[0] == "key=none"
    assert "across" not in "".join(lines)
    assert "***" in "".join(lines)
