"""Where a tenant's replicas go: core requests packed onto boards.

A tenant asks for ``replicas`` replicas of ``cores`` cores each, of one core
kind (CNN or RNN), on boards of one kind (u200, zcu104, ...). A board holds
as many of them as its free cores of that kind and its free dispatcher
contexts allow; two replicas of one tenant may share a board (each is a
tenant of that board, with its own context and cores), unless the tenant
asks for them spread over distinct boards.

The rule is *fewest boards touched first*: the boards that can hold the
most replicas are taken first (the fewest boards cover the request), and
the last one taken is the tightest fit for what is left (the fewest free
cores), so that roomy boards stay free for large requests. Ties go to the lower board index.
Pure functions of :class:`BoardView` snapshots: no Ray, no boards.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfpga.runtime.errors import DeployError, PlacementError

CORE_KINDS = ("cnn", "rnn")


@dataclass(frozen=True)
class BoardView:
    """What the controller knows of one board when it places."""

    index: int
    kind: str  # the board config: "u200", "zcu104", ...
    up: bool
    total: dict  # core kind -> cores of the board
    free: dict  # core kind -> cores no replica holds
    free_contexts: int

    def capacity(self, core_kind: str, cores: int) -> int:
        """How many replicas of ``cores`` cores of ``core_kind`` fit now."""
        if not self.up:
            return 0
        return min(self.free.get(core_kind, 0) // cores, self.free_contexts)

    def describe(self, core_kind: str) -> str:
        if not self.up:
            return f"board {self.index}: down"
        return (f"board {self.index}: {self.free.get(core_kind, 0)} of {self.total.get(core_kind, 0)} "
                f"{core_kind.upper()} cores free, {self.free_contexts} contexts free")


def _check(core_kind: str, cores, replicas) -> None:
    if core_kind not in CORE_KINDS:
        raise ValueError(f"core kind {core_kind!r}: one of {', '.join(CORE_KINDS)}")
    for what, v in (("cores", cores), ("replicas", replicas)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DeployError(f"{what} must be a positive integer, not {v!r}")


def place(boards: list[BoardView], board_kind: str, core_kind: str, cores: int, replicas: int = 1, *,
          spread: bool = False, exclude=(), only=None, tenant: str = "the tenant") -> list[int]:
    """The board index of each of ``replicas`` replicas of ``cores`` cores (an
    index repeats when a board takes several), fewest boards touched first.
    ``spread``: at most one replica per board. ``exclude``: boards not to use;
    ``only``: the one board to use. Raises PlacementError naming the reason."""
    _check(core_kind, cores, replicas)
    what = (f"{tenant} asks for {replicas} replica{'s' * (replicas > 1)} of {cores} {core_kind.upper()} "
            f"core{'s' * (cores > 1)}")
    of_kind = [b for b in boards if b.kind == board_kind]
    if not of_kind:
        kinds = sorted({b.kind for b in boards})
        raise PlacementError(f"{what} on {board_kind} boards, and this cluster has none (it has "
                             f"{', '.join(f'{k} x{sum(b.kind == k for b in boards)}' for k in kinds) or 'no boards'})")
    largest = max(b.total.get(core_kind, 0) for b in of_kind)
    if cores > largest:
        raise PlacementError(f"{what}: a {board_kind} board has {largest} {core_kind.upper()} cores, so no board "
                             "can hold one replica; ask for fewer cores per replica and more replicas")
    if only is not None and only not in [b.index for b in of_kind]:
        raise PlacementError(f"{what} on board {only}, which is no {board_kind} board of this cluster "
                             f"({', '.join(str(b.index) for b in of_kind)} are)")
    usable = [b for b in of_kind if b.index not in exclude and (only is None or b.index == only)]
    caps = {b.index: min(b.capacity(core_kind, cores), 1 if spread else replicas) for b in usable}
    caps = {i: c for i, c in caps.items() if c > 0}
    if sum(caps.values()) < replicas:
        room = sum(caps.values())
        down = sum(not b.up for b in of_kind)
        where = "; ".join(b.describe(core_kind) for b in of_kind if b.index not in exclude)
        skipped = f" (not counting board{'s' * (len(exclude) > 1)} {', '.join(map(str, sorted(exclude)))})" \
            if exclude else ""
        raise PlacementError(f"{what} on {board_kind} boards{' spread over distinct boards' * spread}; there is "
                             f"room for {room}{skipped}: {where or 'no board left'}"
                             f"{f'; {down} of {len(of_kind)} down' if down else ''}")
    free = {b.index: b.free.get(core_kind, 0) for b in usable}
    chosen: list[int] = []
    left = replicas
    while left:
        fits = [i for i, c in caps.items() if c >= left]
        if fits:  # the tightest board that takes the rest
            i = min(fits, key=lambda i: (free[i], i))
            chosen += [i] * left
            break
        i = max(caps, key=lambda i: (caps[i], -i))  # else the roomiest
        chosen += [i] * caps[i]
        left -= caps.pop(i)
    return chosen
