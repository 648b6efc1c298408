"""HTTPS: the agent's router terminating TLS vs Caddy terminating TLS, same upstream, same certificate.

One run, side by side, on loopback: the raw asyncio upstream of bench/router.py, plain HTTP straight to
it ("direct", the reference), the agent's router with its HTTPS listener (the certificate from its
store, chosen by SNI) in its own process, and Caddy's reverse_proxy with TLS (HTTP/1.1 only, as the
router speaks) with the same certificate file, all in front of the same upstream. wrk against each in
turn: keep-alive load, one connection at a time, and a new TLS connection per request
(`Connection: close`: handshakes per second). Writes the "HTTPS" section of bench/BENCHMARKS.md.

    .venv/bin/python bench/https.py [--duration 3] [--rounds 3] [--connections 50] [--no-write]

Needs wrk, caddy and openssl (Debian: `apt-get install wrk caddy openssl`; a bench's own needs, not
the tests'). The certificate (P-256, for `localhost`) comes from a CA made for the run by
tests/tlskit.py. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import ssl
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from router import (  # noqa: E402 - bench/ is not a package: its path goes in first
    CADDY,
    WRK,
    Result,
    _machine,
    _median,
    _Processes,
    _write_section,
    _wrk,
)

from tests.tlskit import TestCA  # noqa: E402

NAME = "localhost"  # wrk sends the URL's host as SNI and Host; it resolves without /etc/hosts
CLOSE = ("-H", "Connection: close")


async def _serve_https(port: int, http_port: int, upstream: int, certs_dir: Path) -> None:
    """The router as the agent runs it, with its HTTPS listener and the store in `certs_dir`."""
    from tako_core.agent.certs import Certs
    from tako_core.agent.router import Router, Upstream

    certs = Certs(certs_dir)
    certs.load()
    router = Router("127.0.0.1", http_port, https_port=port, certs=certs)
    await router.start()
    router.set_route("bench", [NAME], [Upstream("127.0.0.1", upstream)])
    await asyncio.Event().wait()


def _caddy_config(port: int, upstream: int, chain: Path, key: Path) -> dict[str, object]:
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {"servers": {"bench": {
                "listen": [f"127.0.0.1:{port}"],
                "protocols": ["h1"],
                "automatic_https": {"disable": True},
                "tls_connection_policies": [{}],
                "routes": [{"handle": [{"handler": "reverse_proxy",
                                        "upstreams": [{"dial": f"127.0.0.1:{upstream}"}]}]}],
            }}},
            "tls": {"certificates": {"load_files": [{"certificate": str(chain), "key": str(key)}]}},
        },
    }  # fmt: skip


Target = tuple[str, str, int]  # name, URL, pid of the process whose CPU time is measured


def _measure(targets: list[Target], args: argparse.Namespace) -> dict[str, list[Result]]:
    """Medians per mode and target; the targets take turns, their order reversed every other round."""
    modes: dict[str, tuple[int, tuple[str, ...]]] = {
        "keep-alive": (args.connections, ()),
        "one connection": (1, ()),
        "new connection per request": (args.connections, CLOSE),
    }
    for _, url, _ in targets:  # warm up (connection pools, session caches)
        _wrk("warm-up", 0, 1, args.connections, url=url)
    runs: dict[str, list[list[Result]]] = {mode: [[] for _ in targets] for mode in modes}
    for n in range(args.rounds):
        order = list(enumerate(targets))
        if n % 2:
            order.reverse()
        for mode, (connections, options) in modes.items():
            for i, (name, url, pid) in order:
                if options and i == 0:
                    continue  # the raw app ignores `Connection: close`: no new connections to count
                runs[mode][i].append(_wrk(name, 0, args.duration, connections, pid, url=url, options=options))
    return {mode: [_median(r) for r in results if r] for mode, results in runs.items()}


def _table(results: list[Result], *, vs_direct: bool = True) -> str:
    direct, caddy = results[0], next(r for r in results if r.name.startswith("Caddy"))
    rows = [
        "| target | req/s | p50 ms | p99 ms | req/s vs Caddy | p99 vs direct | CPU µs/req (that process) "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        p99 = f"{r.p99_ms / direct.p99_ms:.2f}x" if vs_direct else "-"
        rows.append(
            f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.rps / caddy.rps:.2f}x | "
            f"{p99} | {r.cpu_us:.0f} | {r.errors} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="wrk runs per target and mode; medians reported"
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    for tool in (WRK, CADDY, "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}: apt-get install wrk caddy openssl")
    with _Processes() as procs:
        pair = TestCA(procs.tmp / "ca").leaf(NAME)
        from tako_core.agent.certs import Certs

        Certs(procs.tmp / "tls").install("bench/bench", pair.chain.read_text(), pair.key.read_text())
        up, up_pid = procs.upstream()
        targets: list[Target] = [("direct to the app (plain HTTP)", f"http://127.0.0.1:{up}/", up_pid)]
        port, http_port = _free_ports(2)
        argv = [sys.executable, __file__, "serve", str(port), str(http_port), str(up), str(procs.tmp / "tls")]
        targets.append(("tako router, HTTPS", f"https://{NAME}:{port}/", procs.spawn(argv, port)))
        (caddy_port,) = _free_ports(1)
        config = procs.tmp / "caddy.json"
        config.write_text(json.dumps(_caddy_config(caddy_port, up, pair.chain, pair.key)))
        env = {**os.environ, "XDG_DATA_HOME": str(procs.tmp), "XDG_CONFIG_HOME": str(procs.tmp),
               "HOME": str(procs.tmp)}  # fmt: skip
        caddy_pid = procs.spawn([CADDY, "run", "--config", str(config)], caddy_port, env)
        targets.append(("Caddy 2.6 reverse_proxy, HTTPS", f"https://{NAME}:{caddy_port}/", caddy_pid))
        results = _measure(targets, args)
        handshake = _handshake_cpu_us(pair.chain, pair.key, procs.tmp / "ca" / "ca.pem")

    tables = {
        mode: _table(rows, vs_direct=mode != "new connection per request") for mode, rows in results.items()
    }
    for mode, table in tables.items():
        print(f"{mode}\n{table}\n")
    if args.no_write:
        return
    command = (f".venv/bin/python bench/https.py --duration {args.duration} --rounds {args.rounds} "
               f"--connections {args.connections}")  # fmt: skip
    minutes = len(targets) * 3 * args.rounds * (args.duration + 1) // 60 + 1
    _write_section(
        f"## HTTPS\n\n"
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · {_machine()}; wrk, the app and the proxy share "
        f"the cores. Reproduce: `{command}` (about {minutes} min). Every figure is the median of "
        f"{args.rounds} rounds in which the targets took turns.\n\n"
        f"The router and Caddy terminate TLS for the same raw asyncio app with the same certificate "
        f"(P-256, for `{NAME}`); wrk (OpenSSL, no ALPN: HTTP/1.1) speaks to each over HTTPS and to the "
        f"app itself over plain HTTP, the reference for p99.\n\n"
        f"### Keep-alive: `wrk -t2 -c{args.connections} -d{args.duration}s --latency`\n\n"
        f"{tables['keep-alive']}\n\n"
        f"### One connection, one request at a time: `wrk -t1 -c1 -d{args.duration}s --latency`\n\n"
        f"{tables['one connection']}\n\n"
        f"### A new connection per request: `wrk -t2 -c{args.connections} -H 'Connection: close'`\n\n"
        f"Here req/s is new TLS connections per second (a full handshake each, no resumption), and "
        f"CPU µs/req the proxy's CPU time per connection. For scale: the server's side of one "
        f"handshake alone, with no sockets or asyncio, costs {handshake:.0f} µs of CPU in Python's `ssl` "
        f"({ssl.OPENSSL_VERSION}, measured over memory BIOs); Caddy's runs on Go's own TLS.\n\n"
        f"{tables['new connection per request']}\n\n",
        heading="HTTPS",
    )


def _handshake_cpu_us(chain: Path, key: Path, ca: Path, count: int = 300) -> float:
    """CPU time of the server's side of a full handshake, OpenSSL through Python's `ssl` only."""
    from tako_core.agent.certs import server_context

    server = server_context()
    server.load_cert_chain(chain, key)
    client = ssl.create_default_context(cafile=str(ca))
    spent = 0.0
    for _ in range(count):
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        c = client.wrap_bio(c_in, c_out, server_hostname=NAME)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # flights back and forth until the server is done
            with contextlib.suppress(ssl.SSLWantReadError):
                c.do_handshake()
            s_in.write(c_out.read())
            started = time.process_time()
            try:
                s.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            spent += time.process_time() - started
            c_in.write(s_out.read())
            if done:
                break
    return spent / count * 1e6


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    if len(sys.argv) > 5 and sys.argv[1] == "serve":
        asyncio.run(_serve_https(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])))
    else:
        main()
