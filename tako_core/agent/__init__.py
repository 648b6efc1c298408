"""The agent: the runtime on every server (leases, releases, release runs, rollouts, router).

Everything under this package except `client.py` runs on the server from a zipapp, so it may import
only the stdlib, `tako_core/__init__.py`, `tako_core/mask.py` and its own modules, and must run on
Python 3.10.
"""
