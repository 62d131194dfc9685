"""Split a model's parameter tensors into P contiguous blocks of balanced size (LPPSGD).

Blocks follow the layer order, so a worker owning later layers stops backpropagation early
(partial backpropagation, as in PASSM+/LPP-SGD). Tensor sizes are very uneven (a ResNet's
last stage holds most weights), so cutting into P runs of equal tensor count leaves some
worker almost nothing; instead the cut points minimise the largest block's element count.
"""

from __future__ import annotations


def balanced_blocks(sizes: list, blocks: int) -> list:
    """Index ranges [(start, stop), ...] of ``blocks`` non-empty contiguous runs of ``sizes``
    whose largest total is as small as possible (linear partition, dynamic programming)."""
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    if len(sizes) < blocks:
        raise ValueError(f"cannot split {len(sizes)} tensors into {blocks} non-empty blocks; use fewer workers")
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    count = len(sizes)
    infinity = float("inf")
    # best[k][i]: smallest possible largest block when the first i tensors form k blocks.
    best = [[infinity] * (count + 1) for _ in range(blocks + 1)]
    cut = [[0] * (count + 1) for _ in range(blocks + 1)]
    best[0][0] = 0
    for k in range(1, blocks + 1):
        for i in range(k, count - (blocks - k) + 1):
            for j in range(k - 1, i):
                candidate = max(best[k - 1][j], prefix[i] - prefix[j])
                if candidate < best[k][i]:
                    best[k][i], cut[k][i] = candidate, j
    ranges, stop = [], count
    for k in range(blocks, 0, -1):
        start = cut[k][stop]
        ranges.append((start, stop))
        stop = start
    return ranges[::-1]
