"""Flags of the LPP-SGD code base, accepted so its sample scripts run unchanged.

Each alias maps onto one of our settings. ``translate`` turns the parsed namespace
(our names plus ``lpp_*`` alias entries) into settings; an alias that is given
together with the setting it stands for must agree with it. LPP-SGD flags that have
no effect here are accepted and named in one warning line (``ignored_warning``).
The whole table, with LPP-SGD's meaning of every flag, is docs/LPPSGD.md.
"""

from __future__ import annotations

import argparse
import os

HOGWILD_TYPES = ("LAPSGD", "LPPSGD")
LOCAL_SGD_TYPES = ("PLSGD", "LocalSGD", "PostLocalSGD")

# alias flag -> (our setting, how the value is converted, help)
_VALUE_ALIASES = {
    "--train_processing_bs": ("batch_size", int, "= --batch-size (per rank)"),
    "--test_processing_bs": ("eval_batch_size", int, "= --eval-batch-size"),
    "--bs_multiple": ("accumulation_steps", int, "= --accumulation-steps (batch = train_processing_bs x this)"),
    "--warm_up_epochs": ("warmup_epochs", float, "= --warmup-epochs"),
    "--baseline_lr": ("warmup_start_lr", float, "= --warmup-start-lr"),
    "--averaging_freq": ("local_steps", int, "= --local-steps"),
    "--prepassmepochs": ("prepass_epochs", int, "= --prepass-epochs"),
    "--eta": ("trust_coefficient", float, "= --trust-coefficient"),
    "--test-freq": ("eval_every", int, "= --eval-every"),
}
# Aliases whose meaning depends on the training type: (setting, the types it applies to, help).
_TYPED_ALIASES = {
    "--pre_post_epochs": (
        "switch_epoch",
        LOCAL_SGD_TYPES + HOGWILD_TYPES,
        "= --switch-epoch: PLSGD becomes PostLocalSGD; LAPSGD/LPPSGD average after every node "
        "step for the first E epochs (other types: ignored)",
    ),
    "--num-processes": ("workers_per_node", HOGWILD_TYPES, "= --workers-per-node for LAPSGD/LPPSGD (others: ignored)"),
}
# Accepted, no effect here: flag -> (argparse nargs: 0 = a switch, 1 = one value, "+" = a list).
IGNORED_FLAGS = {
    "--pm": 0,
    "--partition": 0,
    "--no_assms_pre_passm": 0,
    "--dampen_for_passm": 0,
    "--distributed": 0,
    "--dataparallel": 0,
    "--no-progressbar": 0,
    "--debug": 0,
    "--clean-start": 0,
    "--workers": 1,
    "--num-threads": 1,
    "--test_bs_multiple": 1,
    "--numnodes": 1,
    "--host": 1,
    "--masters_share": 1,
    "--multiplier": 1,
    "--lrdecaystep": 1,
    "--pre_passm_epochs": 1,
    "--dampening": 1,
    "--beta": 1,
    "--tb-interval": 1,
    "--num_tags": 1,
    "--gpus": "+",
    "--assmswitchepochs": "+",
}
# LPP-SGD: every scheduler type but cosine is MultiStep over --lrmilestone (default 150 225) with --gamma.
_SCHEDULER_NAMES = {"mstep": "multistep", "const": "multistep", "cosine": "cosine"}
LPPSGD_DEFAULT_MILESTONES = [150, 225]
_BACKENDS = {"nccl": "nccl", "gloo": "gloo", "mpi": "gloo"}  # mpiexec starts the ranks; Gloo carries the traffic
MODEL_ALIASES = {
    "res20": "resnet20",
    "res32": "resnet32",
    "res18": "resnet18",
    "res34": "tv_resnet34",
    "res50": "tv_resnet50",
    "wnet168": "wrn16_8",
    "wnet28": "wrn28_10",
    "resnet": "resnet20",
    "lenet": "lenet5",
    "vgg": "vgg11",
}
# LPP-SGD's res18 is torchvision's ResNet-18 (ImageNet stem); on 32x32 data we keep the CIFAR-stem resnet18.
IMAGENET_MODEL_ALIASES = {"res18": "tv_resnet18"}
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _dest(flag: str) -> str:
    return "lpp_" + flag.lstrip("-").replace("-", "_")


def _add(group, flag: str, **kwargs) -> None:
    """Add an alias unless our own settings already define the flag (e.g. --imagenet-dir)."""
    try:
        group.add_argument(flag, dest=_dest(flag), **kwargs)
    except argparse.ArgumentError:
        pass


def add_alias_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LPP-SGD compatible flags (mapped onto the settings above; docs/LPPSGD.md)")
    for flag, (_, convert, help_text) in _VALUE_ALIASES.items():
        _add(group, flag, type=convert, help=help_text)
    for flag, (_, _, help_text) in _TYPED_ALIASES.items():
        _add(group, flag, type=int, help=help_text)
    _add(group, "--cuda", action="store_true", help="= --device cuda")
    _add(group, "--lars", action="store_true", help="= --optimizer lars")
    _add(group, "--storeresults", action="store_true", help="= --store-results (results.json, args.json)")
    _add(
        group,
        "--scheduler-type",
        choices=sorted(_SCHEDULER_NAMES),
        help="cosine = --lr-schedule cosine; mstep and const = --lr-schedule multistep",
    )
    _add(group, "--lrmilestone", nargs="+", help="= --milestones")
    _add(group, "--dist-backend", choices=sorted(_BACKENDS), help="= --backend (mpi runs as gloo)")
    _add(group, "--imagenet-dir", help="= --imagenet-dir of the imagenet data set")
    for flag, nargs in IGNORED_FLAGS.items():
        if nargs == 0:
            _add(group, flag, action="store_true", help="accepted, no effect here")
        else:
            _add(group, flag, nargs=None if nargs == 1 else nargs, help="accepted, no effect here")


def _training_type(given: dict, base: dict) -> str:
    return str(given.get("training_type", base.get("training_type", "MBSGD")))


def translate(given: dict, base: dict = None) -> dict:
    """Settings from parsed flags: our own flags pass through, aliases are mapped.
    ``base`` holds the settings from a YAML file, which an alias may build on."""
    from utilities.config import FIELDS, ConfigError  # circular at import time only

    base = base or {}
    settings = {name: value for name, value in given.items() if not name.startswith("lpp_")}

    def put(name, value, flag, switch=False):
        if name in settings and str(settings[name]) != str(value):
            given_as = flag if switch else f"{flag} {value}"
            raise ConfigError(f"{given_as} contradicts --{name.replace('_', '-')} {settings[name]}; give only one")
        settings[name] = value

    for flag, (name, _, _) in _VALUE_ALIASES.items():
        if _dest(flag) in given:
            put(name, given[_dest(flag)], flag)
    training_type = _training_type(given, base)
    for flag, (name, types, _) in _TYPED_ALIASES.items():
        if _dest(flag) in given and training_type in types:
            put(name, given[_dest(flag)], flag)
    if "lpp_bs_multiple" in given:  # LPP-SGD's batch is train_processing_bs per pass, times bs_multiple passes
        if "batch_size" in given:
            raise ConfigError(
                "--bs_multiple multiplies --train_processing_bs; use --batch-size with "
                "--accumulation-steps instead of mixing them"
            )
        per_pass = settings.get("batch_size", base.get("batch_size", 128))
        settings["batch_size"] = int(per_pass) * given["lpp_bs_multiple"]
    if given.get("lpp_cuda"):
        put("device", "cuda", "--cuda", switch=True)
    if given.get("lpp_lars"):
        put("optimizer", "lars", "--lars", switch=True)
    if given.get("lpp_storeresults"):
        put("store_results", True, "--storeresults", switch=True)
    if "lpp_dist_backend" in given:
        put("backend", _BACKENDS[given["lpp_dist_backend"]], "--dist-backend")
    if "lpp_imagenet_dir" in given and "imagenet_dir" in FIELDS:
        put("imagenet_dir", given["lpp_imagenet_dir"], "--imagenet-dir")
    if "lpp_lrmilestone" in given:
        put("milestones", given["lpp_lrmilestone"], "--lrmilestone")
    if "lpp_scheduler_type" in given:
        put("lr_schedule", _SCHEDULER_NAMES[given["lpp_scheduler_type"]], "--scheduler-type")
        if settings["lr_schedule"] == "multistep" and "milestones" not in settings and "milestones" not in base:
            settings["milestones"] = list(LPPSGD_DEFAULT_MILESTONES)
    chosen = ("output_dir", "timestamped_output_dir")
    if any(name.startswith("lpp_") for name in given) and not any(n in settings or n in base for n in chosen):
        settings["timestamped_output_dir"] = True  # an LPP-SGD script can be run again: one new folder per run
    return settings


def ignored_flags(given: dict, base: dict = None) -> list:
    """The LPP-SGD flags given that have no effect on this run, as the user wrote them."""
    from utilities.config import FIELDS  # circular at import time only

    training_type = _training_type(given, base or {})
    named = [flag for flag in IGNORED_FLAGS if _dest(flag) in given]
    named += [
        flag for flag, (_, types, _) in _TYPED_ALIASES.items() if _dest(flag) in given and training_type not in types
    ]
    if "lpp_imagenet_dir" in given and "imagenet_dir" not in FIELDS:
        named.append("--imagenet-dir")
    if given.get("lpp_dist_backend") == "mpi":
        named.append("--dist-backend mpi (the ranks talk over Gloo)")
    return named


def ignored_warning(named: list) -> str:
    return f"warning: ignored LPP-SGD flags: {', '.join(named)} (see docs/LPPSGD.md)" if named else ""


def post_local_type(training_type: str, switch_epoch: int) -> str:
    """LPP-SGD runs post-local SGD as PLSGD with --pre_post_epochs E (our --switch-epoch E)."""
    return "PostLocalSGD" if training_type == "PLSGD" and switch_epoch > 0 else training_type


def is_first_rank_by_environment(env=None) -> bool:
    """Rank 0, or a single process, judged from launcher variables alone (the process group does not exist
    yet): so a warning about the command line is printed once, not once per rank."""
    env = os.environ if env is None else env
    return all(env.get(name, "0") in ("", "0") for name in _RANK_VARIABLES)


def normalise_names(settings: dict) -> dict:
    """Map LPP-SGD model and training-type names onto ours, in YAML and command-line settings alike."""
    if "model" in settings:
        model = settings["model"]
        if settings.get("dataset") == "imagenet":
            model = IMAGENET_MODEL_ALIASES.get(model, model)
        settings["model"] = MODEL_ALIASES.get(model, model)
    if settings.get("training_type") == "LocalSGD":
        settings["training_type"] = "PLSGD"
    return settings
