"""A tiny app for the agent tests: answers every request with its version (stdlib only).

Serves HTTP/1.1 keep-alive on 127.0.0.1:$PORT. `version.txt` next to it says what it answers;
`mode.txt` may say `unhealthy` (the health path answers 500) or `crash` (exit at once).
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).parent
VERSION = (HERE / "version.txt").read_text().strip()
MODE = (HERE / "mode.txt").read_text().strip() if (HERE / "mode.txt").exists() else "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls

    def do_GET(self) -> None:
        status = 500 if MODE == "unhealthy" and self.path == "/health" else 200
        body = f"{VERSION}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the instance log


def main() -> None:
    print(f"sample app {VERSION} starting in mode {MODE} on port {os.environ['PORT']}", flush=True)
    print(f"secret is {os.environ.get('DB_PASSWORD', '-')}", flush=True)
    if MODE == "crash":
        sys.exit(3)
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
