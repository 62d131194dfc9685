"""Post-local SGD (Lin et al. 2020, "Don't use large mini-batches, use local SGD", sec. 3): mini-batch SGD
(gradients averaged every step) until the switch point, local SGD after."""

from __future__ import annotations

from train.sync.base import RunShape
from train.sync.flat_buffer import FlatBuffer
from train.sync.plsgd import PLSGD
from utilities.distributed import CommMeter, all_reduce_mean, is_distributed


class PostLocalSGD(PLSGD):
    OPTIONS = (*PLSGD.OPTIONS, "switch_epoch", "switch_step")

    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        switch_step: int,
        average_buffers: bool = True,
        momentum_sync: str = "local",
        **averaging,
    ):
        super().__init__(meter, local_steps, average_buffers, momentum_sync, **averaging)
        if switch_step < 0:
            raise ValueError(f"switch_step must not be negative, got {switch_step}")
        self.switch_step = switch_step

    @classmethod
    def settings(cls, config, shape: RunShape) -> dict:
        settings = super().settings(config, shape)
        switch_epoch = settings.pop("switch_epoch")
        if switch_epoch >= 0:
            settings["switch_step"] = switch_epoch * shape.steps_per_epoch
        elif settings["switch_step"] < 0:
            raise ValueError("PostLocalSGD needs --switch-epoch or --switch-step")
        return settings

    def before_step(self, step: int) -> None:
        if step >= self.switch_step or not is_distributed():
            return
        # Phase 1 is mini-batch SGD: average the gradients, one all-reduce per step.
        # Built each step: the optimizer may replace the .grad tensors (zero_grad(set_to_none=True)).
        gradients = FlatBuffer([p.grad for p in self.model.parameters() if p.grad is not None])
        self.meter.count_round()
        all_reduce_mean(gradients.gather(), self.meter)
        gradients.scatter()

    def gradients_shared(self, step: int) -> bool:
        return step < self.switch_step and is_distributed()

    def after_step(self, step: int) -> None:
        if step < self.switch_step:
            # Gradients were averaged, so parameters agree; BatchNorm statistics still need it.
            if self.phase_one_buffers is not None:
                self.phase_one_buffers.average(self.meter)
            if step + 1 == self.switch_step:
                self.restart_reduced_precision()  # reduced-precision changes count from the switch
            return
        super().after_step(step)

    def prepare(self, model, optimizer):
        model = super().prepare(model, optimizer)
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.phase_one_buffers = FlatBuffer(buffers) if buffers and self.average_buffers and is_distributed() else None
        return model
