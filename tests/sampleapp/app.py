"""The sample app the end-to-end tests deploy: answers with its version and build on 127.0.0.1:$PORT.

It records each start in $TAKO_DATA_DIR/timeline.log so tests can check that no new instance started
before the release command ended.
"""

import http.server
import itertools
import os
import threading
import time
from pathlib import Path

VERSION = Path("VERSION").read_text().strip()
BUILD = os.environ.get("TAKO_BUILD", "?")
DATA = os.environ["TAKO_DATA_DIR"]

with open(os.path.join(DATA, "timeline.log"), "a") as log:
    log.write(f"{time.time():.6f} start {VERSION}\n")

print(f"sample app {VERSION} starting", flush=True)
if os.environ.get("SAMPLE_SECRET"):
    print(f"secret is {os.environ['SAMPLE_SECRET']}", flush=True)


def tick(every: float) -> None:
    """A numbered line every `every` seconds: the log tests look for gaps and repeats."""
    for n in itertools.count(1):
        print(f"tick {n}", flush=True)
        time.sleep(every)


if os.environ.get("SAMPLE_TICK"):
    threading.Thread(target=tick, args=(float(os.environ["SAMPLE_TICK"]),), daemon=True).start()

if os.environ.get("SAMPLE_BOOT_SECONDS"):
    time.sleep(float(os.environ["SAMPLE_BOOT_SECONDS"]))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stalls

    def do_GET(self) -> None:
        healthy = os.environ.get("SAMPLE_HEALTHY", "1") == "1"
        say = os.environ.get("SAMPLE_SAY")  # a var of tako.toml, when a test sets one
        body = f"{VERSION} {BUILD}{' ' + say if say else ''}\n".encode()
        if self.path.startswith("/forwarded"):  # what the router told the app about the request
            seen = (self.headers.get(h, "-") for h in ("X-Forwarded-Proto", "X-Forwarded-Host"))
            body = f"{' '.join(seen)} {self.path}\n".encode()
        self.send_response(200 if healthy else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
