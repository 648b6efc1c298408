"""The demo's app: answers on 127.0.0.1:$PORT with the schema the release command migrated.

Every server reads the same SQLite file (DEMO_DATABASE), so each answer shows the one migration the
leader ran.
"""

from __future__ import annotations

import http.server
import os
import sqlite3

DATABASE = os.environ["DEMO_DATABASE"]
BUILD = os.environ.get("TAKO_BUILD", "?")


def page() -> str:
    db = sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True, timeout=5)
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        rows = db.execute("SELECT language, text FROM greetings ORDER BY id").fetchall() if version else []
    finally:
        db.close()
    lines = [f"hello from tako demo, build {BUILD}", f"schema version {version}, table greetings:"]
    lines += [f"  {language}  {text}" for language, text in rows]
    return "\n".join(lines) + "\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        try:
            body, status = page().encode(), 200
        except sqlite3.Error as err:
            body, status = f"database error: {err}\n".encode(), 500
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One short line per request on stdout: what `tako logs` and the console's logs view show.
        print(f"{self.command} {self.path} {code}", flush=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the rest of http.server's chatter (and its timestamps, which the agent adds)


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
