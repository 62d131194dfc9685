"""Non-iid shards: each rank's class mix drawn from a Dirichlet distribution (Hsu, Qi, Brown 2019).

Small ``alpha`` gives each rank a few dominant classes; large ``alpha`` approaches iid shards.
Shards have equal sizes (the remainder is dropped), so every rank makes the same number of steps
and the same collectives; they are fixed for the whole run, only their order changes per epoch.
"""

from __future__ import annotations

import numpy as np
import torch


def dirichlet_shards(labels: torch.Tensor, world_size: int, alpha: float, seed: int) -> list:
    """One index tensor per rank, equal sizes, disjoint, each rank's class proportions ~ Dirichlet(alpha)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed + 11)
    labels_np = labels.numpy()
    classes = int(labels_np.max()) + 1
    pools = [list(rng.permutation(np.flatnonzero(labels_np == c))) for c in range(classes)]
    per_rank = len(labels_np) // world_size
    shards = []
    for proportions in rng.dirichlet([alpha] * classes, size=world_size):
        wanted = np.floor(proportions * per_rank).astype(int)
        # Largest remainders get the images rounding left over, so the shard has exactly per_rank.
        for c in np.argsort(proportions * per_rank - wanted)[::-1][: per_rank - wanted.sum()]:
            wanted[c] += 1
        taken = []
        for c in range(classes):
            count = min(wanted[c], len(pools[c]))
            taken += pools[c][:count]
            pools[c] = pools[c][count:]
        while len(taken) < per_rank:  # a class ran out: fill from the fullest remaining pool
            fullest = max(range(classes), key=lambda c: len(pools[c]))
            count = min(per_rank - len(taken), len(pools[fullest]))
            taken += pools[fullest][:count]
            pools[fullest] = pools[fullest][count:]
        shards.append(torch.tensor(sorted(taken), dtype=torch.int64))
    return shards
