"""The CPU of a delta upload, each side alone: the client packing the delta, the agent assembling the
release from a kept one (no network, no sshd, one process, one core).

Builds the bench app (~`--size` bytes in 25 kB files, as bench/latency.py does) and unpacks it as an
agent would (releases.prepare, the whole artifact); then, `--rounds` times, changes one file,
builds again and times: the client packing the delta (`Deltas.delta`), and the agent preparing the
new release from it (`releases.prepare` with `base`: unpacking the delta, copying the unchanged files
from the kept release, recording them). Each new release stays kept, as on a server.

    .venv/bin/python bench/delta_pieces.py [--size 50000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from deploylib import _code

from tako_core.agent import releases
from tako_core.agent.delta import missing
from tako_core.agent.layout import AppLayout
from tako_core.build import Artifact, build_artifact
from tako_core.deploy.delta import Deltas
from tako_core.mask import Masker


async def _build(app: Path, cache: Path) -> Artifact:
    return await build_artifact(app, "bench", "production", None, {}, print, cache)


async def _prepare(layout: AppLayout, build: str, upload: Path, base: dict[str, object] | None) -> float:
    started = time.perf_counter()
    await releases.prepare(layout, build, upload, None, [], {}, Masker(), print, base)
    return time.perf_counter() - started


async def main(size: int, rounds: int, where: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="tako-delta-bench-", dir=where))
    try:
        app, cache, uploads = work / "app", work / "cache", work / "uploads"
        (app / "src").mkdir(parents=True)
        uploads.mkdir()
        rng = random.Random(8)
        files = [app / "src" / f"module_{n:04d}.py" for n in range(max(size // 25_000, 1))]
        for n, path in enumerate(files):
            path.write_text(_code(rng, 25_000, n))
        layout = AppLayout(work / "apps" / "bench" / "production")
        first = await _build(app, cache)
        whole = await _prepare(layout, "r0", Path(shutil.copy(first.path, uploads)), None)
        print(f"{len(files)} files, artifact {first.size / 1e6:.1f} MB, unpacked whole in {whole:.3f} s")
        packing, preparing = [], []
        for n in range(1, rounds + 1):
            files[n].write_text(files[n].read_text() + f"# round {n}\n")
            artifact = await _build(app, cache)
            deltas = Deltas()
            try:
                wanted = deltas.hashes(artifact)
                started = time.perf_counter()
                delta = await deltas.delta(artifact, missing(wanted, releases.kept(layout)))
                packing.append(time.perf_counter() - started)
                assert delta is not None
                upload = Path(shutil.copy(delta.path, uploads))
                preparing.append(
                    await _prepare(layout, f"r{n}", upload, {k: list(v) for k, v in delta.base.items()})
                )
                took = f"packed in {packing[-1]:.3f} s, prepared in {preparing[-1]:.3f} s"
                print(f"round {n}: delta {delta.size / 1e3:.0f} kB, {took}")
            finally:
                deltas.close()
        for what, times in (("client packs the delta", packing), ("agent prepares the release", preparing)):
            spread = f"min {min(times):.3f}, max {max(times):.3f}"
            print(f"{what}: median {statistics.median(times):.3f} s ({spread})")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=50_000_000, help="bytes of source in the app")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", help="where the releases go (default: the temp dir)")
    args = parser.parse_args()
    asyncio.run(main(args.size, args.rounds, args.dir))
