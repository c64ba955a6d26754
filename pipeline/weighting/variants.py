"""The dynamic-weight unit's variants (docs/method.md §3): the one table of their structure and their defaults.

Standard library only, so that params validation (:func:`pipeline.weighting.options.parse_weighting`) reads the
same defaults as the unit itself (:mod:`pipeline.weighting.dynamic`) without importing torch.

============  =====================  =======================  ===========================  =====================
variant       FC input               before the softmax       Θ trained by                 LR for Θ (default)
============  =====================  =======================  ===========================  =====================
``fer``       L2-normalised ``z``    raw logits               own optimiser on ``L_w``     0.1 constant
``cavi``      raw ``z``              L2-normalised logits ×1  own optimiser on ``L_w``     network LR × 1
``webcari``   raw ``z``              L2-normalised logits ×2  own optimiser on ``L_w``     network LR × 10
naive         L2-normalised ``z``    L2-normalised logits ÷2  the main optimiser on L_full network LR
============  =====================  =======================  ===========================  =====================

Sources: the FR+FER script's ``--learning_rate_dyn`` default 0.1 (``fer``); the caricature scripts train Θ at the
network's rate (``cavi``) and at 10× it (``webcari``); docs/method.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DYNAMIC_VARIANTS", "NAIVE", "VARIANTS", "Variant"]


@dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes:
        normalize_input: L2-normalise the flattened ``Mixed_7a`` before the FC.
        logit_scale: None = softmax of the raw logits; else softmax of ``logit_scale · L2(logits)``.
        lr_weights: the default constant LR of Θ's optimiser, or None = relative to the network's rate.
        lr_weights_factor: the default factor on the network's rate when ``lr_weights`` is None.
    """

    normalize_input: bool
    logit_scale: float | None
    lr_weights: float | None
    lr_weights_factor: float


VARIANTS: dict[str, Variant] = {
    "fer": Variant(normalize_input=True, logit_scale=None, lr_weights=0.1, lr_weights_factor=1.0),
    "cavi": Variant(normalize_input=False, logit_scale=1.0, lr_weights=None, lr_weights_factor=1.0),
    "webcari": Variant(normalize_input=False, logit_scale=2.0, lr_weights=None, lr_weights_factor=10.0),
    "naive": Variant(normalize_input=True, logit_scale=0.5, lr_weights=None, lr_weights_factor=1.0),
}
#: the naive unit's row (its FC trains with the network: the LR columns do not apply)
NAIVE = "naive"
#: the variants of the paper's unit (``dynamic``'s ``variant`` option)
DYNAMIC_VARIANTS: tuple[str, ...] = ("fer", "cavi", "webcari")
