"""Training types by name: one small class per way the ranks agree."""

from __future__ import annotations

from train.sync.adaptive import AdaptiveJ
from train.sync.base import RunShape, Sync
from train.sync.easgd import EASGD
from train.sync.hogwild import LAPSGD, LPPSGD
from train.sync.mbsgd import MBSGD
from train.sync.plsgd import PLSGD
from train.sync.post_local import PostLocalSGD
from train.sync.slowmo import DiLoCo, SlowMo
from train.sync.torch_averager import TorchPeriodicAverager
from utilities.distributed import CommMeter

# The one list of training types: --training-type's choices come from here (utilities.config).
SYNC_TYPES = {
    "MBSGD": MBSGD,
    "PLSGD": PLSGD,
    "PostLocalSGD": PostLocalSGD,
    "SlowMo": SlowMo,
    "DiLoCo": DiLoCo,
    "AdaptiveJ": AdaptiveJ,
    "EASGD": EASGD,
    "LPPSGD": LPPSGD,
    "LAPSGD": LAPSGD,
    "TorchPeriodicAverager": TorchPeriodicAverager,  # baseline: torch.distributed's PeriodicModelAverager
}


def build_sync(training_type: str, config, meter: CommMeter, shape: RunShape) -> Sync:
    if training_type not in SYNC_TYPES:
        raise ValueError(
            f"training type {training_type!r} is not available yet; choose one of: {', '.join(SYNC_TYPES)}"
        )
    return SYNC_TYPES[training_type].from_config(config, meter, shape)
