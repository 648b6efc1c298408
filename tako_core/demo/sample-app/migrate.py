"""The demo's release command: migrates the ONE SQLite database every server shares.

It runs once, on the leader, while the followers wait. All pending migrations run in one transaction
(SQLite's DDL is transactional), so a failure leaves the schema exactly as it was. The pauses are
there so a person watching the console sees the followers wait.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time

MIGRATIONS = [
    ("create table greetings", "CREATE TABLE greetings (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"),
    ("add column greetings.language", "ALTER TABLE greetings ADD COLUMN language TEXT NOT NULL DEFAULT 'en'"),
    (
        "seed greetings",
        "INSERT INTO greetings (language, text) VALUES"
        " ('en', 'Hello'), ('fr', 'Bonjour'), ('de', 'Hallo'), ('es', 'Hola'), ('ja', 'Konnichiwa')",
    ),
]


def main() -> int:
    database = os.environ["DEMO_DATABASE"]
    pause = float(os.environ.get("DEMO_MIGRATION_PAUSE", "0.8"))
    fail_at = int(os.environ.get("DEMO_FAIL_MIGRATION", "0"))
    # The secret shows how tako masks secret values in the release output.
    print(f"connecting to {database} with DEMO_DB_PASSWORD={os.environ.get('DEMO_DB_PASSWORD', '')}")
    db = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        print(f"schema version {version}, {len(MIGRATIONS) - version} migration(s) to apply", flush=True)
        for number, (what, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
            print(f"  {number}/{len(MIGRATIONS)} {what} ...", flush=True)
            time.sleep(pause)
            if number == fail_at:
                raise sqlite3.OperationalError(f"migration {number} failed (the demo's --fail-release)")
            db.execute(sql)
            db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")
    except sqlite3.Error as err:
        db.execute("ROLLBACK")
        print(f"error: {err}; rolled back, the schema is unchanged", file=sys.stderr, flush=True)
        return 1
    finally:
        db.close()
    print(f"schema version {len(MIGRATIONS)}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
