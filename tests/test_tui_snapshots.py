"""Snapshots of the deploy screen (pytest-textual-snapshot) at 120x40 and 80x24.

Deterministic: the scripted deploy stamps its events from a frozen clock that the console also reads,
so every duration, the elapsed time and the spinner frame are the same on every run. Baselines live in
tests/__snapshots__/; regenerate with `pytest tests/test_tui_snapshots.py --snapshot-update` and look.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from .tui_scenarios import ScriptedDeploy, console, settle, until

SIZES = [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")]
Compare = Callable[..., bool]


@pytest.mark.parametrize("size", SIZES)
def test_mid_release(snap_compare: Compare, size: tuple[int, int]) -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_after_a_failed_release(snap_compare: Compare, size: tuple[int, int]) -> None:
    scenario = ScriptedDeploy(fail_release=True)
    app = console(scenario)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_after_success(snap_compare: Compare) -> None:
    scenario = ScriptedDeploy()
    app = console(scenario)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_abort_dialog(snap_compare: Compare) -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await settle(app, pilot)
        await pilot.press("a")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
