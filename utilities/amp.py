"""Mixed precision (--amp): autocast around the forward pass and loss, loss scaling for fp16.

bf16 keeps fp32's exponent range, so its gradients need no scaling. fp16 gradients of small
losses underflow, so fp16 runs scale the loss before backward and skip the steps whose scaled
gradients overflowed (torch.amp.GradScaler; Micikevicius et al. 2018, "Mixed Precision
Training", sec. 3.2). Parameters, optimizer state, evaluation and all communication stay fp32.
"""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """The autocast context, backward and optimizer step of one run's precision ``mode``."""

    def __init__(self, mode: str, device):
        if mode not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {mode!r}")
        self.mode, self.device_type = mode, torch.device(device).type
        self.dtype = AMP_DTYPES[mode]
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); under fp16, on the unscaled gradients, skipped where they overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
