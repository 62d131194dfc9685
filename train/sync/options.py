"""Which settings each training type reads, checked against the settings the user gave.

Every ``Sync`` class lists the config fields it reads in ``OPTIONS``. A field some type reads but
the chosen one does not is reported in one warning line when it differs from its default (the
command line stays flat, so such a flag is accepted everywhere); a field the chosen type lists in
``REFUSED_OPTIONS`` would change the meaning of the run and is an error instead.
"""

from __future__ import annotations


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def type_specific_fields(sync_types: dict) -> tuple:
    """Fields read by some training types only, in the order the types declare them."""
    names = {}
    for sync_class in sync_types.values():
        names.update(dict.fromkeys((*sync_class.OPTIONS, *sync_class.REFUSED_OPTIONS)))
    return tuple(names)


def ignored_options(training_type: str, sync_types: dict, config, defaults) -> list:
    """The type-specific fields set away from their defaults that ``training_type`` does not read.

    Raises ValueError naming the flags when one of them is refused by the type."""
    sync_class = sync_types[training_type]
    changed = [
        name
        for name in type_specific_fields(sync_types)
        if name not in sync_class.OPTIONS and getattr(config, name) != getattr(defaults, name)
    ]
    refused = [_flag(name) for name in changed if name in sync_class.REFUSED_OPTIONS]
    if refused:
        hint = f" ({sync_class.refusal_hint})" if sync_class.refusal_hint else ""
        raise ValueError(
            f"--training-type {training_type} cannot honour {', '.join(refused)}{hint}; "
            f"drop {'it' if len(refused) == 1 else 'them'} or choose another training type"
        )
    return [name for name in changed if name not in sync_class.REFUSED_OPTIONS]


def ignored_warning(training_type: str, ignored: list) -> str:
    return f"warning: --training-type {training_type} ignores {', '.join(map(_flag, ignored))}" if ignored else ""


def apply_type_defaults(sync_class, config, given: dict) -> None:
    """The inner optimizer (and its LR) a type defaults to, where the user chose none (``given``)."""
    if sync_class.default_optimizer and "optimizer" not in given:
        config.optimizer = sync_class.default_optimizer[0]
        if "lr" not in given:
            config.lr = sync_class.default_optimizer[1]
