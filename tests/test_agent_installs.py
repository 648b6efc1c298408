"""Install reuse on a real agent: a release whose install command and dependency inputs are unchanged gets
the earlier install's outputs at once; a changed lockfile (or `install_inputs` file) installs again; a
reused venv keeps working after the release that built it is gone; unused installs are pruned."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tako_core.config.template import detect
from tako_core.transport.agent_client import AgentClient
from tests.agentkit.kit import AgentProcess, pack, start_agent

# A venv whose "packages" are the lines of requirements.txt, with a console script whose shebang is the
# venv's absolute path, as pip writes them.
INSTALL = (
    "echo installing; echo cache=$PIP_CACHE_DIR; python3 -m venv --without-pip .venv"
    " && site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')"
    ' && for p in $(cat requirements.txt); do echo "NAME = \\"$p\\"" > "$site/$p.py"; done'
    ' && printf "#!$PWD/.venv/bin/python\\nprint(\\"hello from the venv\\")\\n" > .venv/bin/hello'
    " && chmod +x .venv/bin/hello"
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = start_agent(tmp_path_factory.mktemp("agent") / "root", tmp_path_factory.mktemp("pyz"))
    yield process
    process.stop()


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[AgentClient]:
    c = await agent.client()
    yield c
    await c.close()


async def ship(
    agent: AgentProcess,
    client: AgentClient,
    build: str,
    files: dict[str, str],
    inputs: tuple[str, ...] = (),
    *,
    install: str = INSTALL,
    env_vars: dict[str, str] | None = None,
) -> list[str]:
    """Prepare `build` with `files` beside the sample app; returns the install's output."""
    pack(agent.root / "uploads" / f"{build}.tar.zst", build, extra=files)
    output: list[str] = []
    await client.prepare(
        "deps",
        "prod",
        build,
        f"{build}.tar.zst",
        install=install,
        install_inputs=inputs,
        env_vars=env_vars or {},
        secrets={},
        on_output=output.append,
    )
    return output


def in_release(agent: AgentProcess, build: str, *argv: str) -> str:
    release = agent.root / "apps/deps/prod/releases" / build
    return subprocess.run(argv, cwd=release, capture_output=True, text=True, check=True, timeout=30).stdout


async def test_unchanged_inputs_reuse_the_install_and_a_changed_lockfile_installs_again(
    agent: AgentProcess, client: AgentClient
) -> None:
    base = agent.root / "apps/deps/prod"
    first = await ship(agent, client, "d1", {"requirements.txt": "alpha\n"})
    assert "installing" in first
    assert f"cache={base / 'cache/pip'}" in first
    assert in_release(agent, "d1", ".venv/bin/python", "-c", "import alpha; print(alpha.NAME)") == "alpha\n"

    # Same requirements, new code: no install runs; the release links to the same venv.
    again = await ship(agent, client, "d2", {"requirements.txt": "alpha\n", "code.py": "changed"})
    assert "installing" not in again
    assert any(line.startswith("tako: reusing the install") for line in again)
    assert (base / "releases/d2/.venv").resolve() == (base / "releases/d1/.venv").resolve()

    # The release that built the venv is gone: the venv (absolute shebangs included) still works.
    await client.cleanup("deps", "prod", "d1")
    await client.finalize("deps", "prod", "d2", keep=1)
    assert not (base / "releases/d1").exists()
    assert in_release(agent, "d2", ".venv/bin/hello") == "hello from the venv\n"

    # A package added to the lockfile: installed again, and importable.
    added = await ship(agent, client, "d3", {"requirements.txt": "alpha\nbeta\n"})
    assert "installing" in added
    imported = in_release(agent, "d3", ".venv/bin/python", "-c", "import alpha, beta; print(beta.NAME)")
    assert imported == "beta\n"

    # Pruning d2 leaves its install unused: it goes; d3's stays.
    assert await client.finalize("deps", "prod", "d3", keep=1) == ["d2"]
    assert len(os.listdir(base / "installs")) == 1
    assert in_release(agent, "d3", ".venv/bin/hello") == "hello from the venv\n"


async def test_install_inputs_are_part_of_the_key_and_no_input_means_no_reuse(
    agent: AgentProcess, client: AgentClient
) -> None:
    files = {"requirements.txt": "alpha\n", "constraints.txt": "alpha==1\n"}
    assert "installing" in await ship(agent, client, "c1", files, inputs=("constraints.txt",))
    assert "installing" not in await ship(agent, client, "c2", files, inputs=("constraints.txt",))
    files["constraints.txt"] = "alpha==2\n"
    assert "installing" in await ship(agent, client, "c3", files, inputs=("constraints.txt",))

    # Without any input file tako cannot tell what the install depends on: it runs every time.
    assert "installing" in await ship(agent, client, "n1", {"deps.txt": "alpha\n"})
    assert "installing" in await ship(agent, client, "n2", {"deps.txt": "alpha\n"})
    assert not (Path(agent.root / "apps/deps/prod/releases/n2/.venv")).is_symlink()


def _wheel(dest: Path) -> Path:
    """A one-module wheel, installable from its path without any index."""
    info = "tinydep-1.0.dist-info"
    files = {
        "tinydep.py": b'NAME = "tinydep"\n',
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    path = dest / "tinydep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in {**files, f"{info}/RECORD": f"{record}{info}/RECORD,,\n".encode()}.items():
            wheel.writestr(name, data)
    return path


async def test_the_python_preset_installs_with_uv_where_the_server_has_it_else_pip(
    agent: AgentProcess, client: AgentClient, tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/requirements.txt").write_text("")
    install = detect(tmp_path / "app").install
    assert install is not None
    wheel = _wheel(tmp_path)
    assert shutil.which("uv", path=os.environ["PATH"]) is None  # the agent's PATH: no uv
    with_uv = tmp_path / "bin"
    with_uv.mkdir()
    (with_uv / "uv").symlink_to(Path(sys.executable).parent / "uv")  # the dev install's uv
    env = {"PATH": f"{with_uv}:{os.environ['PATH']}"}
    base = agent.root / "apps/deps/prod"

    await ship(agent, client, "u1", {"requirements.txt": f"{wheel}\n"}, install=install, env_vars=env)
    assert (
        in_release(agent, "u1", ".venv/bin/python", "-c", "import tinydep; print(tinydep.NAME)")
        == "tinydep\n"
    )
    assert not (base / "releases/u1/.venv/bin/pip").exists()  # uv's venvs have no pip
    assert any((base / "cache/uv").iterdir())  # uv's cache is the app's own

    # Without uv on the server: pip.
    await ship(agent, client, "u2", {"requirements.txt": f"{wheel}\n# pip\n"}, install=install)
    assert (
        in_release(agent, "u2", ".venv/bin/python", "-c", "import tinydep; print(tinydep.NAME)")
        == "tinydep\n"
    )
    assert (base / "releases/u2/.venv/bin/pip").exists()
