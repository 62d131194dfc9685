"""How tools.report's plots name and draw their lines, so that a study of 15-25 settings stays readable.

Sweep folders are named "training_type=PLSGD,local_steps=32,seed=2"; in a legend that is mostly the
same words repeated, so ``short_label`` keeps the values and abbreviates the keys. Matplotlib's
default cycle has 10 colours, so a plot of more settings would draw two lines alike: ``styles``
combines colours with markers and dash patterns instead.
"""

from __future__ import annotations

import itertools

# Sweep keys as a legend shows them; an empty name shows the value alone (the method, the optimizer).
KEY_NAMES = {
    "training_type": "",
    "optimizer": "",
    "local_steps": "J",
    "workers_per_node": "workers",
    "weight_decay": "wd",
    "batch_size": "batch",
    "lr_scaling": "scaling",
    "reference_batch": "ref",
    "warmup_epochs": "warmup",
    "switch_epoch": "switch",
    "trust_coefficient": "trust",
    "dirichlet_alpha": "dirichlet",
}
COLOURS = tuple(f"C{index}" for index in range(10))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", ":", "-.")


def short_label(label: str) -> str:
    """A sweep folder name for a legend, e.g. PLSGD J=32 for training_type=PLSGD,local_steps=32; a label
    not made of key=value parts stays as it is."""
    parts = label.split(",")
    if not all("=" in part for part in parts):
        return label
    words = []
    for part in parts:
        key, value = part.split("=", 1)
        name = KEY_NAMES.get(key, key)
        words.append(f"{name}={value}" if name else value)
    return " ".join(words)


def short_labels(labels: list) -> list:
    """The short form of every label, or the labels unchanged where shortening would make two alike."""
    shortened = [short_label(label) for label in labels]
    return shortened if len(set(shortened)) == len(set(labels)) else list(labels)


def styles(count: int) -> list:
    """``count`` (colour, marker, dash) triples, no two alike up to 10 x 8 x 4 = 320; colours change
    fastest, so the first 10 lines differ in colour alone, as matplotlib's default would draw them."""
    combinations = zip(itertools.cycle(COLOURS), itertools.cycle(MARKERS), itertools.cycle(DASHES))
    seen, found = set(), []
    # Cycles of lengths 10, 8 and 4 repeat every 40 triples; after that, walk the full product.
    for triple in itertools.chain(itertools.islice(combinations, 40), itertools.product(COLOURS, MARKERS, DASHES)):
        if triple not in seen:
            seen.add(triple)
            found.append(triple)
        if len(found) == count:
            break
    return found + [found[-1]] * (count - len(found)) if found else []


def legend_outside(axes, entries: int) -> None:
    """The legend to the right of the axes, where it hides no line; savefig needs bbox_inches="tight"."""
    axes.legend(fontsize="x-small" if entries > 10 else "small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
