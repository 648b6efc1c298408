"""The sample app's release command: prints progress, records when it ran, exits as configured."""

import os
import sys
import time

DATA = os.environ["TAKO_DATA_DIR"]
LINES = int(os.environ.get("SAMPLE_RELEASE_LINES", "3"))
PAUSE = float(os.environ.get("SAMPLE_RELEASE_PAUSE", "0"))


def mark(what: str) -> None:
    with open(os.path.join(DATA, "timeline.log"), "a") as log:
        log.write(f"{time.time():.6f} {what}\n")


mark("release-begin")
for i in range(LINES):
    print(f"migration step {i + 1}/{LINES}", flush=True)
    if PAUSE:
        time.sleep(PAUSE)
if os.environ.get("SAMPLE_SECRET"):
    print(f"using secret {os.environ['SAMPLE_SECRET']}", flush=True)
code = int(os.environ.get("SAMPLE_RELEASE_EXIT", "0"))
if code:
    print(f"migration failed with code {code}", file=sys.stderr, flush=True)
mark(f"release-end {code}")
sys.exit(code)
