"""`python3 -m tako_core.agent ...` (the zipapp's __main__ does the same)."""

from tako_core.agent.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
