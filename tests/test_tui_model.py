"""The deploy screen's model: what each event does to the panels, the header word and the log lines."""

from __future__ import annotations

from tako_core.events import (
    RUNNING_RELEASE,
    DeployFinished,
    DeployStarted,
    GateFailed,
    Outcome,
    Phase,
    PhaseChanged,
    RolloutProgress,
    ServerResult,
    State,
    UploadProgress,
)
from tako_core.units import ago, duration, progress, size
from tako_tui.widgets.model import DeployModel

SERVERS = ("s1", "s2")


def started() -> DeployModel:
    model = DeployModel("t")
    model.apply([DeployStarted(app="a", env="e", servers=SERVERS, leader="s1", release="migrate", at=100.0)])
    return model


def test_upload_shows_progress_then_the_core_detail_or_the_size() -> None:
    model = started()
    model.apply(
        [
            PhaseChanged(server="s1", phase=Phase.UPLOAD, state=State.RUNNING),
            UploadProgress(server="s1", sent=2_100_000, total=5_000_000),
        ]
    )
    assert model.servers["s1"].info(Phase.UPLOAD) == "2.1/5.0 MB"
    model.apply([PhaseChanged(server="s1", phase=Phase.UPLOAD, state=State.DONE, seconds=1.0)])
    assert model.servers["s1"].info(Phase.UPLOAD) == "5.0 MB"
    model.apply([PhaseChanged(server="s2", phase=Phase.UPLOAD, state=State.DONE, detail="cached")])
    assert model.servers["s2"].info(Phase.UPLOAD) == "cached"


def test_a_done_phase_keeps_a_short_detail_beside_it_and_no_note() -> None:
    model = started()
    model.apply([PhaseChanged(server="s1", phase=Phase.CONNECT, state=State.DONE, detail="agent 0.1.0")])
    view = model.servers["s1"]
    assert view.info(Phase.CONNECT) == "agent 0.1.0"
    assert view.note(Phase.CONNECT) == ""
    model.apply([PhaseChanged(server="s1", phase=Phase.RELEASE, state=State.RUNNING, detail=RUNNING_RELEASE)])
    assert view.note(Phase.RELEASE) == RUNNING_RELEASE
    assert view.info(Phase.RELEASE) == ""


def test_live_durations_run_from_the_event_time_and_freeze_at_the_core_figure() -> None:
    model = started()
    model.apply([PhaseChanged(server="s1", phase=Phase.ROLLOUT, state=State.RUNNING, at=110.0)])
    phase = model.servers["s1"].phases[Phase.ROLLOUT]
    assert phase.elapsed(now=112.5) == 2.5
    model.apply([RolloutProgress(server="s1", ready=1, total=2)])
    assert model.servers["s1"].info(Phase.ROLLOUT) == "1/2 instances"
    model.apply([PhaseChanged(server="s1", phase=Phase.ROLLOUT, state=State.DONE, seconds=4.0, at=114.0)])
    assert phase.elapsed(now=999.0) == 4.0
    assert model.elapsed(now=130.0) == 30.0


def test_the_header_word_follows_the_deploy() -> None:
    model = DeployModel("t")
    assert model.overall() == "starting"
    model.apply([PhaseChanged(server=None, phase=Phase.BUILD, state=State.RUNNING)])
    assert model.overall() == "building"
    model.apply(
        [
            DeployStarted(app="a", env="e", servers=SERVERS, leader="s1", release="m"),
            PhaseChanged(server=None, phase=Phase.BUILD, state=State.DONE),
            PhaseChanged(server="s1", phase=Phase.RELEASE, state=State.RUNNING),
            PhaseChanged(server="s2", phase=Phase.RELEASE, state=State.WAITING),
        ]
    )
    assert model.overall() == "releasing"
    assert [v.role for v in model.servers.values()] == ["leader", "follower"]
    model.apply([GateFailed(leader="s1", reason="exited with code 3", exit_code=3)])
    assert model.overall() == "release failed"
    results = tuple(ServerResult(server=s, outcome=Outcome.ABORTED) for s in SERVERS)
    model.apply([DeployFinished(ok=False, exit_code=1, seconds=3.0, results=results)])
    assert model.overall() == "failed"
    assert model.servers["s2"].result == results[1]


def test_a_failure_and_the_gate_reach_the_log_with_their_server() -> None:
    model = started()
    changes = model.apply(
        [
            PhaseChanged(server="s1", phase=Phase.RELEASE, state=State.FAILED, error="exit 3\nlast line"),
            GateFailed(leader="s1", reason="exited with code 3", exit_code=3),
        ]
    )
    assert changes.lines == [
        ("s1", "✗ Release failed on s1: exit 3"),
        ("s1", "✗ last line"),
        ("s1", "── exited with code 3: aborting on every server"),
    ]


def test_formats() -> None:
    assert [duration(s) for s in (0.44, 12.7, 185, 3725)] == ["0.4s", "12s", "3m05s", "1h02m"]
    assert [size(n) for n in (512, 1800, 5_200_000)] == ["512 B", "1.8 kB", "5.2 MB"]
    assert progress(2_100_000, 5_000_000) == "2.1/5.0 MB"
    assert progress(10, 900) == "10/900 B"
    now = 1_700_000_000.0
    assert [ago(now - s, now) for s in (-5, 42, 150, 7200, 3 * 86400)] == [
        "0s ago",  # a clock a little ahead of ours is not the future
        "42s ago",
        "2m ago",
        "2h ago",
        "3d ago",
    ]
