"""Every setting of a run: one typed dataclass, each field with its default and a one-line help
(meaning and unit). utilities.config parses the command line and YAML into it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from dataloaders import DATASET_NAMES
from models import MODEL_NAMES
from train.optimizers import OPTIMIZER_NAMES
from train.sync import SYNC_TYPES

# The choices come from the registries; these names stay for the modules that import them from here.
TRAINING_TYPES = tuple(SYNC_TYPES)
DATASETS = DATASET_NAMES
MODELS = MODEL_NAMES
OPTIMIZERS = OPTIMIZER_NAMES


class ConfigError(ValueError):
    """Bad user input; the message is one line meant for the user."""


def _field(default: Any, help: str, choices: Optional[tuple] = None, **kwargs) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


@dataclass
class Config:
    # What to train.
    training_type: str = _field("MBSGD", "how the ranks agree", TRAINING_TYPES)
    dataset: str = _field("cifar10", "data set", DATASETS)
    data_dir: str = _field("./data", "where data sets are read from and downloaded to")
    download: bool = _field(True, "download a missing torchvision data set (checksummed)")
    synthetic_size: int = _field(10000, "training images in the synthetic data set (test set is a fifth of it)")
    test_ratio: float = _field(0.1, "fraction held out as test set for npy data without test_*.npy files")
    val_ratio: float = _field(
        0.1, "fraction of the training split held out for validation (seeded, same on every rank)"
    )
    dirichlet_alpha: float = _field(
        0.0, "non-iid shards: each rank's class mix ~ Dirichlet(alpha), smaller is more skewed (0 = iid shards)"
    )
    augment: bool = _field(True, "random crop (pad 4) and horizontal flip on training batches (flip off for MNIST)")
    num_classes: Optional[int] = _field(None, "expected class count; checked against the data set")
    imagenet_dir: str = _field("", "--dataset imagenet: ImageFolder root holding train/ and val/ (default: --data-dir)")
    image_size: int = _field(
        224,
        "--dataset imagenet: side of the training and evaluation crops, pixels (evaluation resizes to 256/224 of it first)",
    )
    loader_workers: int = _field(4, "--dataset imagenet: DataLoader processes per rank decoding images")
    model: str = _field("lenet5w", "network", MODELS)
    ghost_batch_size: int = _field(0, "BatchNorm normalises over virtual batches of this size (0 = off)")

    # How long.
    epochs: int = _field(10, "passes over the training split")
    max_steps: int = _field(0, "stop after this many optimizer steps (0 = no limit)")
    total_steps: int = _field(0, "fix the total optimizer steps per rank; epochs follow from it (0 = use --epochs)")

    # Batches.
    batch_size: int = _field(128, "training images per rank per optimizer step")
    eval_batch_size: int = _field(256, "images per rank per evaluation batch (activation memory grows with it)")
    accumulation_steps: int = _field(1, "micro-batches accumulated per optimizer step")
    max_micro_batch: int = _field(4096, "accumulate automatically when a rank's batch exceeds this many images")

    # Optimizer.
    optimizer: str = _field("sgd", "optimizer (inner optimizer for local methods)", OPTIMIZERS)
    lr: float = _field(0.05, "base learning rate (before the scaling rule)")
    momentum: float = _field(0.9, "SGD/LARS momentum")
    nesterov: bool = _field(False, "Nesterov momentum for SGD")
    weight_decay: float = _field(5e-4, "L2 weight decay (decoupled for AdamW)")
    trust_coefficient: float = _field(0.001, "LARS trust coefficient eta")
    lars_exclude_bias_norm: bool = _field(True, "LARS/LAMB: no trust ratio or weight decay for tensors with ndim <= 1")

    # Learning-rate schedule.
    lr_schedule: str = _field("cosine", "LR schedule after warmup", ("constant", "cosine", "multistep"))
    milestones: list = _field([], "multistep: epochs at which the LR is multiplied by --gamma")
    gamma: float = _field(0.1, "multistep decay factor")
    warmup_epochs: float = _field(0.0, "linear warmup length in epochs")
    warmup_start_lr: Optional[float] = _field(
        None, "LR at the start of warmup (default: the unscaled --lr when a scaling rule is on, else lr/10)"
    )
    lr_scaling: str = _field("none", "scale lr by global batch / --reference-batch", ("none", "linear", "sqrt"))
    reference_batch: int = _field(256, "global batch at which --lr is the right LR")

    # Local methods.
    local_steps: int = _field(16, "J: local optimizer steps between averaging rounds")
    average_buffers: bool = _field(True, "also average BatchNorm running statistics at a sync")
    momentum_sync: str = _field(
        "local", "optimizer momentum at a sync: keep, zero, or average it", ("local", "reset", "average")
    )
    switch_epoch: int = _field(
        -1,
        "PostLocalSGD: epoch at which local SGD starts (-1 = use --switch-step); LAPSGD/LPPSGD: average after every node step before it",
    )
    switch_step: int = _field(-1, "PostLocalSGD: step at which local SGD starts")
    slow_momentum: float = _field(0.5, "SlowMo beta")
    slow_lr: float = _field(1.0, "SlowMo alpha")
    outer_lr: float = _field(0.7, "DiLoCo outer Nesterov learning rate")
    outer_momentum: float = _field(0.9, "DiLoCo outer Nesterov momentum")
    elastic_alpha: float = _field(
        0.0, "EASGD moving rate alpha, in (0, 1/ranks] (0 = 0.9 / ranks, the paper's p*alpha = 0.9)"
    )
    adaptive_rule: str = _field("threshold", "AdaptiveJ rule", ("threshold", "trend"))
    adaptive_thresholds: list = _field(
        [0.02, 0.005, 0.001], "AdaptiveJ: relative val-loss change thresholds early, middle, late"
    )
    min_local_steps: int = _field(4, "AdaptiveJ lower bound on J")
    max_local_steps: int = _field(64, "AdaptiveJ upper bound on J")
    workers_per_node: int = _field(1, "LPPSGD/LAPSGD: shared-memory workers per rank")
    prepass_epochs: int = _field(0, "LPPSGD: epochs of full updates before partitioned steps")

    # Reproducibility and where things go.
    seed: int = _field(0, "seed for the model, splits, shards and augmentation")
    deterministic: bool = _field(False, "deterministic kernels (slower)")
    amp: str = _field(
        "off",
        "mixed precision: forward pass and loss autocast to bf16, or fp16 with loss scaling; weights, optimizer, evaluation and communication stay fp32",
        ("off", "bf16", "fp16"),
    )
    output_dir: str = _field("", "run folder (default runs/<training-type>-<dataset>-<model>)")
    timestamped_output_dir: bool = _field(
        False,
        "append -YYYYmmdd-HHMMSS to the run folder, new for every run (on for LPP-SGD flags without --output-dir)",
    )
    store_results: bool = _field(False, "also write LPP-SGD's results.json and args.json into the run folder")
    resume: str = _field(
        "",
        "continue a run: 'auto' (also a bare --resume; newest valid checkpoint, or a fresh start if none) or a checkpoint path",
    )
    overwrite: bool = _field(False, "replace a run already in --output-dir")
    allow_config_change: bool = _field(
        False, "--resume with settings other than the checkpoint's (batch, J, LR, ...); config.yaml records the change"
    )
    keep_checkpoints: int = _field(0, "keep only the newest N epoch checkpoints per rank (0 = all)")
    epochs_per_job: int = _field(
        0,
        "stop after this many epochs, checkpointed, for time-limited jobs; continue with --resume auto (0 = run to the end)",
    )
    on_nan: str = _field("stop", "a non-finite loss stops the run, or its step is skipped", ("stop", "skip"))
    check_replicas: bool = _field(
        False, "after every sync verify (checksum all-reduce) that all ranks hold the same model"
    )
    eval_every: int = _field(1, "evaluate every this many epochs")
    log_every: int = _field(50, "progress line every this many steps (rank 0)")
    tensorboard: bool = _field(False, "also write TensorBoard events under <output-dir>/tensorboard")

    # Distributed.
    device: str = _field("auto", "compute device", ("auto", "cpu", "cuda"))
    backend: str = _field(
        "auto", "collective backend (auto: NCCL when every rank has a GPU, else Gloo)", ("auto", "gloo", "nccl")
    )
    dist_url: str = _field("", "init method such as tcp://host:port (default: from the launcher)")
    grad_compression: str = _field(
        "none",
        "MBSGD: gradients sent in reduced precision, or PowerSGD rank-2 (DDP communication hooks)",
        ("none", "fp16", "bf16", "powersgd"),
    )
    bucket_cap_mb: float = _field(25.0, "MBSGD: DDP gradient bucket size in MB")
    overlap: bool = _field(
        False,
        "PLSGD/PostLocalSGD/SlowMo/DiLoCo/AdaptiveJ: start the averaging all-reduce without blocking, apply it --overlap-steps local steps later",
    )
    overlap_steps: Any = _field(
        "auto",
        "--overlap: local steps the all-reduce may run behind before its average is applied (auto: the fewest that hide it, measured)",
    )
    fragments: Any = _field(
        "auto",
        "PLSGD/SlowMo/DiLoCo/AdaptiveJ: average the state as this many fragments at staggered steps of each period "
        "(streaming; auto: min(J, 8) with --overlap, so each fragment's round is short and little of the state is stale, 1 without)",
    )
    sync_dtype: str = _field(
        "fp32",
        "PLSGD/SlowMo/AdaptiveJ: send the change since the last sync in this precision, error kept locally",
        ("fp32", "bf16", "fp16"),
    )
    hierarchy: list = _field(
        [], "PLSGD: J_node J_global: average within each node every J_node steps, across nodes every J_global"
    )
    ranks_per_node: int = _field(0, "ranks that share a node for --hierarchy (0 = from the launcher)")
    timeout: float = _field(300.0, "seconds a collective may wait before the run fails")
    comm_thread_policy: str = _field(
        "batch",
        "Gloo's network threads: batch = a packet's arrival waits for a free core or the scheduler's tick instead of preempting the computation (Linux); normal = default scheduling",
        ("batch", "normal"),
    )

    def resolved_output_dir(self) -> str:
        return self.output_dir or f"runs/{self.training_type}-{self.dataset}-{self.model}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
