"""Streamed fragments (Douillard et al. 2025, "Streaming DiLoCo", sec. 2.2): ``--fragments F``.

The flat state (parameters, then floating-point buffers) is cut into F contiguous pieces of
near-equal size. Fragment f is averaged every J steps like the whole state would be, but at its
own offset inside the period: its first round comes after J - floor(f J / F) steps, so the F
rounds of a period are spread evenly over it and the link carries a steady stream of J/F-sized
messages instead of one burst per period. Each round is a round of its own in the meter (bytes:
the fragment, plus the depth element of ``--overlap-steps auto``) and, with --overlap, stays in
flight for the agreed depth like a whole-state round. The owner's ``after_average(fragment)``
runs on the fragment's elements only (SlowMo/DiLoCo: the outer step of that fragment).

A fragment is a FlatBuffer over 1-D views into the live tensors, so gather/scatter touch only its
own elements and every Averager feature (overlap, reduced precision with error feedback, the
check for a stopped rank) works on it unchanged.
"""

from __future__ import annotations

from train.sync.averaging import Averager
from train.sync.flat_buffer import FlatBuffer


def split_pieces(sizes: list, count: int) -> list:
    """Cut the concatenation of tensors of ``sizes`` elements into ``count`` contiguous parts of
    near-equal size; each part is a list of (tensor index, start, stop) in that tensor's elements."""
    total = sum(sizes)
    if not 1 <= count <= total:
        raise ValueError(f"count must be between 1 and the {total} elements, got {count}")
    bounds = [total * part // count for part in range(count + 1)]
    parts, first = [], 0
    for low, high in zip(bounds, bounds[1:]):
        pieces = []
        for index, size in enumerate(sizes):
            begin, end = max(low, first), min(high, first + size)
            if begin < end:
                pieces.append((index, begin - first, end - first))
            first += size
        parts.append(pieces)
        first = 0
    return parts


class Fragment:
    """One streamed fragment: its pieces, its averager, its own count of steps since it was averaged."""

    def __init__(self, index: int, pieces: list, tensors: list, meter, wire_dtype: str, steps_since_sync: int):
        for tensor_index, _, _ in pieces:
            if not tensors[tensor_index].is_contiguous():
                raise ValueError("--fragments needs contiguous parameters and buffers")
        self.index, self.pieces = index, pieces
        views = [tensors[i].view(-1)[start:stop] for i, start, stop in pieces]
        self.averager = Averager(FlatBuffer(views), meter, wire_dtype)
        self.steps_since_sync = steps_since_sync
        self.steps_in_flight, self.depth = 0, 0

    def in_flight(self) -> bool:
        return self.averager.pending is not None


class StreamedFragments:
    """Begins and completes the fragments' rounds for a PLSGD-like owner, which supplies
    ``local_steps``, ``overlap_depth()``, ``depth_proposal()``, ``round_completed(...)`` and
    ``after_average(fragment)``."""

    def __init__(self, owner, tensors: list, count: int, meter, wire_dtype: str):
        self.owner, self.meter = owner, meter
        self.period = owner.local_steps
        parts = split_pieces([t.numel() for t in tensors], count)
        self.fragments = [
            Fragment(index, pieces, tensors, meter, wire_dtype, index * self.period // count)
            for index, pieces in enumerate(parts)
        ]

    def after_step(self) -> None:
        if self.owner.local_steps != self.period:
            self.restagger(self.owner.local_steps)
        for fragment in self.fragments:
            fragment.steps_since_sync += 1
            if fragment.in_flight():
                fragment.steps_in_flight += 1
                fragment.averager.poll(fragment.steps_in_flight)
        for fragment in self.fragments:  # in index order on every rank: the same collectives in the same order
            if fragment.in_flight() and fragment.steps_in_flight >= fragment.depth:
                self.complete(fragment)
        for fragment in self.fragments:
            if fragment.steps_since_sync >= self.period:
                if fragment.in_flight():  # only if J shrank while it was in flight
                    self.complete(fragment)
                self.begin(fragment)

    def restagger(self, local_steps: int) -> None:
        """J changed (AdaptiveJ): keep each fragment's phase inside the period, scaled to the new J."""
        for fragment in self.fragments:
            fragment.steps_since_sync = fragment.steps_since_sync * local_steps // self.period
        self.period = local_steps

    def begin(self, fragment: Fragment, blocking: bool = False) -> None:
        self.meter.count_round()
        fragment.steps_since_sync, fragment.steps_in_flight = 0, 0
        fragment.depth = 0 if blocking else self.owner.overlap_depth()
        overlapping = fragment.depth > 0
        fragment.averager.begin(overlapping, self.owner.depth_proposal() if overlapping else None)
        if not overlapping:
            self.complete(fragment)

    def complete(self, fragment: Fragment) -> None:
        control = fragment.averager.complete(lambda: self.owner.after_average(fragment))
        self.owner.round_completed(fragment.averager, fragment.steps_in_flight, control)

    def settle(self) -> None:
        for fragment in self.fragments:
            if fragment.in_flight():
                self.complete(fragment)

    def synchronize_rest(self) -> None:
        """The final sync: every fragment with steps not yet averaged gets one blocking round, so all
        replicas end identical (a fragment averaged at the very last step needs none)."""
        self.settle()
        for fragment in self.fragments:
            if fragment.steps_since_sync:
                self.begin(fragment, blocking=True)

    def all_synced(self) -> bool:
        return all(f.steps_since_sync == 0 and not f.in_flight() for f in self.fragments)

    def in_flight(self) -> bool:
        return any(f.in_flight() for f in self.fragments)

    def restart_from_current(self) -> None:
        for fragment in self.fragments:
            fragment.averager.restart_from_current()

    def state_dict(self) -> dict:
        return {
            "period": self.period,
            "fragments": [
                {
                    "steps_since_sync": f.steps_since_sync,
                    "steps_in_flight": f.steps_in_flight,
                    "depth": f.depth,
                    "averager": f.averager.state_dict(),
                }
                for f in self.fragments
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["fragments"]) != len(self.fragments):
            raise ValueError(
                f"the checkpoint has {len(state['fragments'])} fragments, this run "
                f"{len(self.fragments)}; resume with the same --fragments"
            )
        self.period = state["period"]
        for fragment, saved in zip(self.fragments, state["fragments"]):
            fragment.steps_since_sync, fragment.steps_in_flight = saved["steps_since_sync"], saved["steps_in_flight"]
            fragment.depth = saved["depth"]
            fragment.averager.load_state_dict(saved["averager"])
