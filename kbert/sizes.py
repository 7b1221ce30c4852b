"""Named BERT sizes.

The miniatures of Turc et al. 2019 ("Well-Read Students Learn Better") form a grid of
layers x hidden sizes; BERT-base and BERT-large are from Devlin et al. 2018. Every size
uses heads = hidden / 64 and intermediate = 4 * hidden.
"""

import re

NAMED_SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

GRID_LAYERS = (2, 4, 6, 8, 10, 12)
GRID_HIDDEN = (128, 256, 512, 768)


def size_config(name):
    """Returns `num_layers, num_heads, hidden_dim, intermediate_dim` of a named size.

    Args:
        name: one of `tiny, mini, small, medium, base, large`, or `L{layers}_H{hidden}`
            with layers in 2, 4, ..., 12 and hidden in 128, 256, 512, 768 (or `L24_H1024`).
    """
    key = str(name).strip()
    if key.lower() in NAMED_SIZES:
        num_layers, hidden_dim = NAMED_SIZES[key.lower()]
    else:
        match = re.fullmatch(r"[Ll](\d+)[_-][Hh](\d+)", key)
        valid_grid = match and (
            (int(match[1]) in GRID_LAYERS and int(match[2]) in GRID_HIDDEN)
            or (int(match[1]), int(match[2])) == NAMED_SIZES["large"]
        )
        if not valid_grid:
            raise ValueError(
                f"Unknown BERT size. Expected one of {sorted(NAMED_SIZES)} or "
                f"'L{{layers}}_H{{hidden}}' with layers in {GRID_LAYERS} and hidden in "
                f"{GRID_HIDDEN} (or L24_H1024). Received: size={name!r}"
            )
        num_layers, hidden_dim = int(match[1]), int(match[2])
    return {
        "num_layers": num_layers,
        "num_heads": hidden_dim // 64,
        "hidden_dim": hidden_dim,
        "intermediate_dim": 4 * hidden_dim,
    }
