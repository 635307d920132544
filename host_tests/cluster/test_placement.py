"""Placement as a pure function of board snapshots: fewest boards touched
first (checked against brute force), tightest fit for the rest, contexts
and spread respected, and every refusal naming its reason. No Ray here."""

from __future__ import annotations

import itertools
import random

import pytest

from vfpga.runtime.cluster.placement import BoardView, place
from vfpga.runtime.errors import DeployError, PlacementError


def boards(*free, kind="u200", total=16, contexts=16, down=()):
    return [BoardView(i, kind, i not in down, {"cnn": total, "rnn": 8}, {"cnn": f, "rnn": 8}, contexts)
            for i, f in enumerate(free)]


def test_replicas_go_to_as_few_boards_as_can_hold_them():
    assert place(boards(16, 16, 16), "u200", "cnn", 8, 2) == [0, 0]  # one board holds both
    assert place(boards(4, 12, 16), "u200", "cnn", 4, 3) == [1, 1, 1]  # the tightest that holds all three
    assert place(boards(4, 12, 16), "u200", "cnn", 4, 6) == [2, 2, 2, 2, 1, 1]  # the roomiest, then the tightest
    assert place(boards(4, 12, 16), "u200", "cnn", 4, 1) == [0]


def test_fewest_boards_touched_against_brute_force():
    rng = random.Random(7)
    for _ in range(300):
        free = [rng.choice([0, 2, 4, 6, 8, 12, 16]) for _ in range(rng.randint(1, 5))]
        cores, n = rng.choice([1, 2, 4, 8]), rng.randint(1, 8)
        views = boards(*free)
        caps = [f // cores for f in free]
        best = next((k for k in range(1, len(free) + 1)
                     if any(sum(caps[i] for i in c) >= n for c in itertools.combinations(range(len(free)), k))),
                    None)
        if best is None:
            with pytest.raises(PlacementError):
                place(views, "u200", "cnn", cores, n)
            continue
        got = place(views, "u200", "cnn", cores, n)
        assert len(got) == n
        assert len(set(got)) == best, (free, cores, n, got)
        for i in set(got):
            assert got.count(i) * cores <= free[i]


def test_contexts_spread_exclude_and_only():
    few = [BoardView(0, "u200", True, {"cnn": 16}, {"cnn": 16}, 1), BoardView(1, "u200", True, {"cnn": 16},
                                                                             {"cnn": 16}, 16)]
    assert place(few, "u200", "cnn", 2, 2) == [1, 1]  # board 0 has one free context only
    assert place(boards(16, 16, 16), "u200", "cnn", 2, 3, spread=True) == [0, 1, 2]
    assert place(boards(16, 16, 16), "u200", "cnn", 2, 1, exclude={0}) == [1]
    assert place(boards(16, 16, 16), "u200", "cnn", 2, 2, only=2) == [2, 2]
    assert place(boards(16, 16, kind="zcu104", total=4) + boards(16, 16), "u200", "rnn", 8, 1) == [0]


@pytest.mark.parametrize("case, kwargs, words", [
    ("too many", dict(views=boards(8, 4, 0), cores=8, replicas=3),
     ["asks for 3 replicas of 8 CNN cores", "room for 1", "board 0: 8 of 16 CNN cores free", "board 2: 0 of 16"]),
    ("bigger than a board", dict(views=boards(16), cores=20, replicas=1),
     ["has 16 CNN cores", "no board can hold one replica"]),
    ("no such kind", dict(views=boards(16), cores=1, replicas=1, board_kind="zcu104"),
     ["on zcu104 boards", "has none", "u200 x1"]),
    ("down", dict(views=boards(16, 16, down=(1,)), cores=16, replicas=2),
     ["room for 1", "board 1: down", "1 of 2 down"]),
    ("spread", dict(views=boards(16, 16), cores=2, replicas=3, spread=True),
     ["spread over distinct boards", "room for 2"]),
    ("only a board of another kind", dict(views=boards(16), cores=1, replicas=1, only=5),
     ["on board 5", "no u200 board"]),
])
def test_refusals_say_why(case, kwargs, words):
    views = kwargs.pop("views")
    kind = kwargs.pop("board_kind", "u200")
    with pytest.raises(PlacementError) as e:
        place(views, kind, "cnn", kwargs.pop("cores"), kwargs.pop("replicas"), tenant="tenant 'x'", **kwargs)
    for w in words:
        assert w in str(e.value), (case, str(e.value))


@pytest.mark.parametrize("cores, replicas", [(0, 1), (1, 0), (1.5, 1), (True, 1), (2, "3")])
def test_bad_requests_are_refused(cores, replicas):
    with pytest.raises(DeployError, match="must be a positive integer"):
        place(boards(16), "u200", "cnn", cores, replicas)
