"""Task-weighting strategies (torch only) and their registry.

``build_weighting(name, options, task_names, feature_dim)`` builds a strategy from a params.yaml method block (its
``weighting`` key is ``name``, the other keys are ``options``). Names and options (defaults in brackets):

- ``single_<task>`` (e.g. ``single_identity``): one-hot weights; no options.
- ``static``: ``weights`` [``1/T`` each, 0.5/0.5 for two tasks], ``T`` numbers ≥ 0, not all 0.
- ``equal``: all weights 1; no options.
- ``dynamic`` (the paper's unit, :class:`~pipeline.weighting.dynamic.DynamicWeighting`):
  ``variant`` [``fer``] ∈ {fer, cavi, webcari}; ``sigma`` [0.01] > 0; ``detach_weights`` [false];
  ``lr_weights`` [0.1 for fer, null for cavi/webcari]: a constant LR for the unit's optimiser, or null = network
  LR × ``lr_weights_factor`` [1 for fer/cavi, 10 for webcari] (> 0); ``base`` [zeros]: ``T`` offsets.
- ``naive_dynamic``: ``base`` [zeros]; the FC trains with the network.
- ``uncertainty``: no options.
- ``dwa``: ``temperature`` [2.0] > 0.
- ``gradnorm``: ``alpha`` [1.5] ≥ 0; ``lr_weights`` [0.025] > 0.

Every unknown name, unknown option or invalid value raises :class:`ValueError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.weighting.base import OwnLearningRate, Weighting, WeightingStep
from pipeline.weighting.baselines import DWAWeighting, GradNormWeighting, UncertaintyWeighting
from pipeline.weighting.dynamic import DYNAMIC_VARIANTS, DynamicWeighting, NaiveDynamicWeighting
from pipeline.weighting.fixed import EqualWeighting, SingleTaskWeighting, StaticWeighting
from pipeline.weighting.options import OptionReader

__all__ = [
    "DYNAMIC_VARIANTS", "SINGLE_PREFIX", "WEIGHTINGS", "DWAWeighting", "DynamicWeighting", "EqualWeighting",
    "GradNormWeighting", "NaiveDynamicWeighting", "OwnLearningRate", "SingleTaskWeighting", "StaticWeighting",
    "UncertaintyWeighting", "Weighting", "WeightingStep", "build_weighting", "weighting_names",
]

#: prefix of the single-task names (``single_<task>``)
SINGLE_PREFIX = "single_"

_Builder = Callable[[OptionReader, list[str], int], Weighting]


def _static(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    weights = opts.number_list("weights", [1.0 / len(tasks)] * len(tasks), len(tasks), low=0.0)
    if not any(w > 0 for w in weights):
        raise ValueError(f"weighting 'static': option 'weights' must not be all zero, got {weights}")
    return StaticWeighting(tasks, weights)


def _equal(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    return EqualWeighting(tasks)


def _dynamic(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    variant = opts.choice("variant", "fer", DYNAMIC_VARIANTS)
    sigma = opts.number("sigma", 0.01, low=0.0, low_open=True)
    detach = opts.boolean("detach_weights", False)
    lr = opts.optional_number("lr_weights", 0.1 if variant == "fer" else None, low=0.0, low_open=True)
    factor = opts.number("lr_weights_factor", 10.0 if variant == "webcari" else 1.0, low=0.0, low_open=True)
    base = opts.number_list("base", [0.0] * len(tasks), len(tasks))
    return DynamicWeighting(tasks, _feature_dim(feature_dim), variant=variant, sigma=sigma, detach_weights=detach,
                            base=base, own_lr=OwnLearningRate(constant=lr, factor=factor))


def _naive(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    base = opts.number_list("base", [0.0] * len(tasks), len(tasks))
    return NaiveDynamicWeighting(tasks, _feature_dim(feature_dim), base=base)


def _uncertainty(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    return UncertaintyWeighting(tasks)


def _dwa(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    return DWAWeighting(tasks, temperature=opts.number("temperature", 2.0, low=0.0, low_open=True))


def _gradnorm(opts: OptionReader, tasks: list[str], feature_dim: int) -> Weighting:
    alpha = opts.number("alpha", 1.5, low=0.0)
    lr = opts.number("lr_weights", 0.025, low=0.0, low_open=True)
    return GradNormWeighting(tasks, alpha=alpha, lr_weights=lr)


_BUILDERS: dict[str, _Builder] = {
    "static": _static,
    "equal": _equal,
    "dynamic": _dynamic,
    "naive_dynamic": _naive,
    "uncertainty": _uncertainty,
    "dwa": _dwa,
    "gradnorm": _gradnorm,
}

#: the registry's names; ``single_<task>`` stands for one name per task
WEIGHTINGS: tuple[str, ...] = (f"{SINGLE_PREFIX}<task>", *_BUILDERS)


def weighting_names(task_names: Sequence[str]) -> list[str]:
    """The concrete names valid for these tasks (``single_identity``, …, ``static``, …)."""
    return [f"{SINGLE_PREFIX}{t}" for t in task_names] + list(_BUILDERS)


def _feature_dim(feature_dim: int) -> int:
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim must be a positive int (C·h·w of Mixed_7a), got {feature_dim!r}")
    return feature_dim


def build_weighting(name: str, options: Mapping[str, Any] | None, task_names: Sequence[str],
                    feature_dim: int) -> Weighting:
    """Build the strategy ``name`` with ``options`` for ``task_names`` (loss order, identity first).

    Args:
        name: a registry name (:data:`WEIGHTINGS`; ``single_<task>`` for any task).
        options: the method block minus ``weighting`` (None = defaults).
        task_names: the ``T`` task names.
        feature_dim: ``C·h·w`` of ``Mixed_7a`` (the dynamic units' FC input size; 16128 for a 160 input).

    Raises:
        ValueError: unknown name, unknown option or invalid option value (one line each).
    """
    tasks = list(task_names)
    if not tasks:
        raise ValueError("a weighting needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task names must be unique, got {tasks}")
    if not isinstance(name, str):
        raise ValueError(f"weighting name must be a string, got {name!r}")
    opts = OptionReader(name, options)
    if name.startswith(SINGLE_PREFIX) and name[len(SINGLE_PREFIX):] in tasks:
        opts.finish()
        return SingleTaskWeighting(tasks, name[len(SINGLE_PREFIX):])
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(weighting_names(tasks))}")
    strategy = builder(opts, tasks, feature_dim)
    opts.finish()
    return strategy
