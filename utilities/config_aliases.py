"""Flags of the LPP-SGD code base, accepted so its sample scripts run unchanged.

Each alias maps onto one of our settings. ``translate`` turns the parsed namespace
(our names plus ``lpp_*`` alias entries) into settings; an alias that is given
together with the setting it stands for must agree with it.
"""

from __future__ import annotations

import argparse

# alias flag -> (our setting, how the value is converted, help)
_VALUE_ALIASES = {
    "--train_processing_bs": ("batch_size", int, "= --batch-size (per rank)"),
    "--test_processing_bs": ("eval_batch_size", int, "= --eval-batch-size"),
    "--bs_multiple": ("accumulation_steps", int, "= --accumulation-steps (batch = train_processing_bs x this)"),
    "--warm_up_epochs": ("warmup_epochs", float, "= --warmup-epochs"),
    "--baseline_lr": ("warmup_start_lr", float, "= --warmup-start-lr"),
    "--averaging_freq": ("local_steps", int, "= --local-steps"),
    "--pre_post_epochs": ("switch_epoch", int, "= --switch-epoch (PLSGD becomes PostLocalSGD)"),
    "--num-processes": ("workers_per_node", int, "= --workers-per-node"),
    "--prepassmepochs": ("prepass_epochs", int, "= --prepass-epochs"),
    "--eta": ("trust_coefficient", float, "= --trust-coefficient"),
    "--dist-backend": ("backend", str, "= --backend"),
    "--test-freq": ("eval_every", int, "= --eval-every"),
}
_SCHEDULER_NAMES = {"mstep": "multistep", "const": "constant", "cosine": "cosine"}
MODEL_ALIASES = {"res20": "resnet20", "res18": "resnet18", "resnet": "resnet20", "lenet": "lenet5", "vgg": "vgg11"}


def _dest(flag: str) -> str:
    return "lpp_" + flag.lstrip("-").replace("-", "_")


def add_alias_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LPP-SGD compatible flags (mapped onto the settings above)")
    for flag, (_, convert, help_text) in _VALUE_ALIASES.items():
        group.add_argument(flag, dest=_dest(flag), type=convert, help=help_text)
    group.add_argument("--cuda", dest="lpp_cuda", action="store_true", help="= --device cuda")
    group.add_argument("--lars", dest="lpp_lars", action="store_true", help="= --optimizer lars")
    group.add_argument("--storeresults", dest="lpp_storeresults", action="store_true",
                       help="accepted; every run stores its results")
    group.add_argument("--scheduler-type", dest="lpp_scheduler_type", choices=sorted(_SCHEDULER_NAMES),
                       help="= --lr-schedule (mstep, const, cosine)")
    group.add_argument("--lrmilestone", dest="lpp_lrmilestone", nargs="+", help="= --milestones")


def translate(given: dict, base: dict = None) -> dict:
    """Settings from parsed flags: our own flags pass through, aliases are mapped.
    ``base`` holds the settings from a YAML file, which an alias may build on."""
    from utilities.config import ConfigError  # circular at import time only

    settings = {name: value for name, value in given.items() if not name.startswith("lpp_")}

    def put(name, value, flag):
        if name in settings and str(settings[name]) != str(value):
            raise ConfigError(f"{flag} {value} contradicts --{name.replace('_', '-')} {settings[name]}; give only one")
        settings[name] = value

    for flag, (name, _, _) in _VALUE_ALIASES.items():
        if _dest(flag) in given:
            put(name, given[_dest(flag)], flag)
    if "lpp_bs_multiple" in given:  # LPP-SGD's batch is train_processing_bs per pass, times bs_multiple passes
        if "batch_size" in given:
            raise ConfigError("--bs_multiple multiplies --train_processing_bs; use --batch-size with "
                              "--accumulation-steps instead of mixing them")
        per_pass = settings.get("batch_size", (base or {}).get("batch_size", 128))
        settings["batch_size"] = int(per_pass) * given["lpp_bs_multiple"]
    if given.get("lpp_cuda"):
        put("device", "cuda", "--cuda")
    if given.get("lpp_lars"):
        put("optimizer", "lars", "--lars")
    if "lpp_scheduler_type" in given:
        put("lr_schedule", _SCHEDULER_NAMES[given["lpp_scheduler_type"]], "--scheduler-type")
    if "lpp_lrmilestone" in given:
        put("milestones", given["lpp_lrmilestone"], "--lrmilestone")
    return settings


def normalise_names(settings: dict) -> dict:
    """Map LPP-SGD model and training-type names onto ours, in YAML and command-line settings alike."""
    if "model" in settings:
        settings["model"] = MODEL_ALIASES.get(settings["model"], settings["model"])
    if settings.get("training_type") == "LocalSGD":
        settings["training_type"] = "PLSGD"
    return settings
