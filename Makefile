# Benchmarks (bench/BENCHMARKS.md). `make bench`: the quick set, under 5 minutes, prints only.
# `make bench-full`: the published figures (about 20 minutes), written into bench/BENCHMARKS.md.
PY := .venv/bin/python

.PHONY: bench bench-full

bench:
	$(PY) bench/deploy.py --servers 3 --rounds 2 --no-write
	$(PY) bench/scaling.py --servers 1 3 10 --inprocess --rounds 1 --no-write
	$(PY) bench/zero_downtime.py --servers 3 --deploys 3 --no-write
	$(PY) bench/router.py --duration 1 --rounds 1 --connections 50 --no-write
	$(PY) bench/console.py --runs 1 --no-write
	$(PY) bench/latency.py --rtt 0 100 --rounds 1 --no-write

bench-full:
	$(PY) bench/deploy.py --servers 3 10 --rounds 5
	$(PY) bench/deploy.py --servers 3 --rounds 5 --instances 2
	$(PY) bench/scaling.py --servers 1 3 10 30 --inprocess 30 --rounds 3
	$(PY) bench/zero_downtime.py --servers 3 --deploys 10
	$(PY) bench/zero_downtime.py --servers 3 --deploys 10 --instances 2
	$(PY) bench/router.py --duration 3 --rounds 3 --connections 50
	$(PY) bench/console.py --runs 5
	$(PY) bench/latency.py --rtt 0 100 300 --rounds 5
