"""Evaluation over a whole split: each rank scores its slice, the (sum, count) pairs are reduced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataloaders import EvalBatches
from utilities.distributed import all_reduce_sum


def evaluate(model: torch.nn.Module, batches: EvalBatches, device: torch.device) -> tuple:
    """(mean loss, accuracy) over the whole split; each rank covers its slice, sums are reduced."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for inputs, targets in batches:
            logits = model(inputs)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
            correct += (logits.argmax(dim=1) == targets).sum()
    model.train(was_training)
    total_loss, total_correct = all_reduce_sum([loss_sum.item(), correct.item()], device)
    return total_loss / batches.total, total_correct / batches.total
