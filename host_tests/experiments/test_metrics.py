"""The experiments' rate and turnaround figures from completion times."""

from __future__ import annotations

import pytest

from vfpga.runtime.experiments import metrics

HZ = 300e6


def test_closed_loop_rate_is_the_steady_state():
    # completions every 3 ms after a first one at 5 ms: 1 / 3 ms, whatever the horizon
    ends = [int(HZ * t) for t in (0.005, 0.008, 0.011, 0.014)]
    assert metrics.closed_loop_rate(ends, HZ, int(HZ)) == pytest.approx(1 / 0.003)
    assert metrics.closed_loop_rate(list(reversed(ends)), HZ, int(HZ * 0.02)) == pytest.approx(1 / 0.003)


def test_one_completion_counts_its_own_time_not_the_horizon():
    """A tenant whose second request the horizon cut off: one request in
    15.5 ms is 64.5 requests a second, not one per 31 ms horizon."""
    assert metrics.closed_loop_rate([int(HZ * 0.0155)], HZ, int(HZ * 0.031)) == pytest.approx(1 / 0.0155)
    assert metrics.closed_loop_rate([], HZ, int(HZ * 0.031)) == 0.0
