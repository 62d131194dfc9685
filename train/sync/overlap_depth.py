"""``--overlap-steps auto``: the smallest overlap depth that hides an averaging round.

An overlapped round is begun at a sync step and its average applied D local steps later. A D
too small holds training up at the completion (the link is slower than D steps of compute); a
D too large only makes the applied average staler. So the depth that matters is the smallest
one at which the all-reduce has already finished when it is completed.

What is measured, on every rank (only rank 0's figures are used):
- while a round is in flight, its work object is polled once per local step, so "it was done
  after k steps" is known to one step without waiting;
- a round that was not done at its completion step held training up for ``waited`` seconds;
  it needed D + ceil(waited / step) steps, with the step's compute time measured as training goes.
The proposal is the largest need of the rounds of the last three periods (one slow round on a
shared link should not cause a stall in the next; with streamed fragments a period has one round
per fragment), capped by the caller at J.

Agreement: every rank must complete a round at the same step (the same collectives at the same
steps), so the depth is rank 0's proposal, and it travels inside the averaging message itself:
rank 0 adds its proposal as one extra element, the other ranks add 0, and the sum that comes
back is the proposal on every rank. No extra collective, no extra latency, and the element is
counted in the meter like the rest of the message. A proposal sent with round k is adopted
when round k completes (at the same step on every rank), so it applies from round k + 1 on.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Optional

AUTO = "auto"
# Integers up to 256 are exact in bf16 (the coarsest wire precision), so the summed proposal is exact.
MAXIMUM_DEPTH = 256
_NEGLIGIBLE_WAIT = 0.02  # a wait below this fraction of a step is timer noise, not a round that was exposed


class AutoDepth:
    """Rank-local measurements and the depth the ranks agreed on."""

    def __init__(self, initial: int, periods: int = 3, step_window: int = 16):
        if initial < 1:
            raise ValueError(f"initial must be at least 1, got {initial}")
        self.depth = min(initial, MAXIMUM_DEPTH)  # agreed: identical on every rank
        self.periods = periods
        self.needs = deque(maxlen=periods)
        self.step_seconds = deque(maxlen=step_window)

    def set_rounds_per_period(self, rounds: int) -> None:
        """Streamed fragments make ``rounds`` rounds a period: remember the needs of as many periods."""
        self.needs = deque(self.needs, maxlen=self.periods * rounds)

    def record_step(self, seconds: float) -> None:
        """Compute time of one local step (from the end of one after_step to the start of the next)."""
        if seconds > 0:
            self.step_seconds.append(seconds)

    def typical_step(self) -> Optional[float]:
        # The median ignores the epoch-end evaluation that lands in one interval now and then.
        return statistics.median(self.step_seconds) if self.step_seconds else None

    def record_round(self, depth: int, done_after: Optional[int], waited: float) -> None:
        """A round completed ``depth`` steps after it began; polls saw it done after ``done_after``
        steps (None: not before the completion), and completing it waited ``waited`` seconds."""
        if done_after is not None and done_after <= depth:
            self.needs.append(max(1, done_after))
            return
        step = self.typical_step()
        if step is None or waited <= _NEGLIGIBLE_WAIT * step:
            self.needs.append(depth)
            return
        self.needs.append(depth + math.ceil(waited / step))

    def proposal(self) -> int:
        """What this rank would choose now (only rank 0's proposal is used)."""
        return min(MAXIMUM_DEPTH, max(self.needs)) if self.needs else self.depth

    def adopt(self, agreed: float) -> None:
        """The proposal that came back with a completed round: the same number on every rank."""
        self.depth = min(MAXIMUM_DEPTH, max(1, int(round(agreed))))

    def state_dict(self) -> dict:
        return {"depth": self.depth, "needs": list(self.needs), "step_seconds": list(self.step_seconds)}

    def load_state_dict(self, state: dict) -> None:
        self.depth = state["depth"]
        self.needs.clear()
        self.needs.extend(state["needs"])
        self.step_seconds.clear()
        self.step_seconds.extend(state["step_seconds"])
