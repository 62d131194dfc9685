"""A fake communicator: N simulated ranks in one process, for testing sync logic without spawning.

Each rank runs the same function in its own thread; ``torch.distributed``'s collectives are
replaced (for the duration of a test, through pytest's ``monkeypatch``) by versions that meet at
a barrier, combine the ranks' tensors in rank order and hand every rank the result. The sync
classes, ``Averager``, ``FlatBuffer`` and ``utilities.distributed`` all call these through the
module ``torch.distributed``, so they run unchanged. Every collective is logged (kind, dtype and
a copy of what each rank sent) so a test can check what went on the wire.

Not simulated: process groups other than the world (``--hierarchy``), and real asynchrony (an
``async_op`` collective completes when issued; its ``wait`` returns at once).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

COMBINE = {
    dist.ReduceOp.SUM: lambda stacked: stacked.sum(0),
    dist.ReduceOp.MIN: lambda stacked: stacked.min(0).values,
    dist.ReduceOp.MAX: lambda stacked: stacked.max(0).values,
}


@dataclass
class Collective:
    """One collective as every rank took part in it: ``sent[rank]`` is a copy of rank's input."""

    kind: str
    dtype: torch.dtype
    sent: list = field(default_factory=list)


class _Completed:
    """What an ``async_op`` collective returns: it already happened."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class FakeCommunicator:
    def __init__(self, world_size: int, timeout_s: float = 20.0):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=timeout_s)
        self.local = threading.local()
        self.inputs: list = [None] * world_size
        self.log: list = []

    def install(self, monkeypatch) -> "FakeCommunicator":
        """Route ``torch.distributed`` to these simulated ranks until the test ends."""
        for name, replacement in {
            "is_available": lambda: True,
            "is_initialized": lambda: True,
            "get_world_size": lambda group=None: self.world_size,
            "get_rank": lambda group=None: self.rank,
            "all_reduce": self.all_reduce,
            "broadcast": self.broadcast,
            "barrier": lambda group=None, **kwargs: self._meet(),
        }.items():
            monkeypatch.setattr(dist, name, replacement)
        return self

    @property
    def rank(self) -> int:
        return self.local.rank

    def run(self, function, *args) -> list:
        """``function(rank, world_size, *args)`` on every simulated rank; their results in rank order.
        A failure on any rank breaks the barrier, so the others stop too instead of waiting forever."""
        results, errors = [None] * self.world_size, [None] * self.world_size

        def entry(rank):
            self.local.rank = rank
            try:
                results[rank] = function(rank, self.world_size, *args)
            except BaseException as error:  # noqa: BLE001 - handed to the test thread below
                errors[rank] = error
                self.barrier.abort()

        threads = [threading.Thread(target=entry, args=(rank,), daemon=True) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first_error = next(
            (e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
            next((e for e in errors if e is not None), None),
        )
        if first_error is not None:
            raise first_error
        return results

    def collectives(self, kind: str = None) -> list:
        return [entry for entry in self.log if kind is None or entry.kind == kind]

    def _meet(self) -> None:
        self.barrier.wait()

    def _exchange(self, kind: str, tensor: torch.Tensor, combine) -> None:
        """Every rank deposits its tensor; rank 0 combines them; every rank copies the result in."""
        self.inputs[self.rank] = tensor.detach().clone()
        self._meet()
        if self.rank == 0:
            self.log.append(Collective(kind, tensor.dtype, list(self.inputs)))
            self.result = combine(self.inputs)
        self._meet()
        with torch.no_grad():
            tensor.copy_(self.result)
        self._meet()  # nobody deposits the next collective's input before everyone has read this result

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if group is not None:
            raise NotImplementedError("the fake communicator simulates the world group only")
        self._exchange("all_reduce", tensor, lambda inputs: COMBINE[op](torch.stack(inputs)))
        return _Completed() if async_op else None

    def broadcast(self, tensor, src=0, group=None, async_op=False):
        if group is not None:
            raise NotImplementedError("the fake communicator simulates the world group only")
        self._exchange("broadcast", tensor, lambda inputs: inputs[src])
        return _Completed() if async_op else None
