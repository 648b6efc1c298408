"""The agent: the runtime on every server (leases, releases, release runs, rollouts, router).

The server side runs from a zipapp on the host's own python3 (3.10+), so it imports only the stdlib,
`tako_core/__init__.py`, `tako_core/mask.py` and this package (h11 is bundled for the router).
The client's side lives in tako_core/transport (agent_client, agent_zipapp).

    protocol   wire format, error codes, RunResult (shared with the client)
    server     the unix socket: NDJSON lines in, tagged events and results out, multiplexed by id
    service    the operations; params: their typed parameters
    leases     one deploy per app/env; releases + extract: prepare, cleanup, `current`, pruning
    runs       release commands and their resumable logs; procs: spawning and killing process groups
    rollout    instances of an app/env and the rolling update; instances: supervision; health: probes
    daemon, cli, __main__   running it; layout: where things live under ROOT
"""
