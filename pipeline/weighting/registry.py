"""The strategies by name: ``build_weighting(name, options, task_names, feature_dim)`` builds one from a params.yaml
method block (its ``weighting`` key is ``name``, the other keys are ``options``).

Options are validated and defaulted by :func:`pipeline.weighting.options.parse_weighting` (the list of names, options
and defaults is there); this module only maps the parsed choice to its class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.weighting.base import Weighting
from pipeline.weighting.baselines import DWAWeighting, GradNormWeighting, UncertaintyWeighting
from pipeline.weighting.dynamic import DynamicWeighting, NaiveDynamicWeighting
from pipeline.weighting.fixed import EqualWeighting, SingleTaskWeighting, StaticWeighting
from pipeline.weighting.options import SINGLE_PREFIX, STRATEGIES, WeightingChoice, parse_weighting

__all__ = ["WEIGHTINGS", "build_strategy", "build_weighting"]

#: the registry's names; ``single_<task>`` stands for one name per task
WEIGHTINGS: tuple[str, ...] = (f"{SINGLE_PREFIX}<task>", *STRATEGIES)

#: parsed strategy → constructor (task names, feature size, parsed arguments)
_CLASSES: dict[str, Callable[[list[str], int, dict[str, Any]], Weighting]] = {
    "single": lambda tasks, dim, a: SingleTaskWeighting(tasks, **a),
    "static": lambda tasks, dim, a: StaticWeighting(tasks, **a),
    "equal": lambda tasks, dim, a: EqualWeighting(tasks),
    "dynamic": lambda tasks, dim, a: DynamicWeighting(tasks, dim, **a),
    "naive_dynamic": lambda tasks, dim, a: NaiveDynamicWeighting(tasks, dim, **a),
    "uncertainty": lambda tasks, dim, a: UncertaintyWeighting(tasks),
    "dwa": lambda tasks, dim, a: DWAWeighting(tasks, **a),
    "gradnorm": lambda tasks, dim, a: GradNormWeighting(tasks, **a),
}


def _feature_dim(feature_dim: int) -> int:
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim must be a positive int (C·h·w of Mixed_7a), got {feature_dim!r}")
    return feature_dim


def build_weighting(name: str, options: Mapping[str, Any] | None, task_names: Sequence[str],
                    feature_dim: int) -> Weighting:
    """Build the strategy ``name`` with ``options`` for ``task_names`` (loss order).

    Args:
        name: a registry name (:data:`WEIGHTINGS`; ``single_<task>`` for any task).
        options: the method block minus ``weighting`` (None = defaults).
        task_names: the ``T`` task names.
        feature_dim: ``C·h·w`` of ``Mixed_7a`` (the dynamic units' FC input size; 16128 for a 160 input).

    Raises:
        ValueError: unknown name, unknown option or invalid option value (one line each).
    """
    return build_strategy(parse_weighting(name, options, task_names), task_names, feature_dim)


def build_strategy(choice: WeightingChoice, task_names: Sequence[str], feature_dim: int) -> Weighting:
    """The strategy of a parsed method block (:func:`~pipeline.weighting.options.parse_weighting` for these
    ``task_names``)."""
    return _CLASSES[choice.strategy](list(task_names), _feature_dim(feature_dim), choice.arguments)
