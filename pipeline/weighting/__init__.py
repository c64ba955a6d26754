"""Task-weighting strategies (torch) and their registry.

- :mod:`~pipeline.weighting.base`: the interface (``compute(losses, features, present=…)``) and the presence mask;
- :mod:`~pipeline.weighting.fixed`: single-task, static and equal weights;
- :mod:`~pipeline.weighting.dynamic`: the paper's dynamic unit and its naive variant (their table:
  :mod:`~pipeline.weighting.variants`);
- :mod:`~pipeline.weighting.baselines`: uncertainty, DWA, GradNorm;
- :mod:`~pipeline.weighting.options`: the method blocks of params (names, options, defaults; no torch);
- :mod:`~pipeline.weighting.registry`: ``build_weighting(name, options, task_names, feature_dim)``.

Names are imported lazily (PEP 562), so that params validation can use :mod:`~pipeline.weighting.options` without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → the module that defines it
_EXPORTS = {
    "OWN_UPDATES": "options", "OwnLearningRate": "base", "Weighting": "base", "WeightingStep": "base",
    "masked_sum": "base",
    "EqualWeighting": "fixed", "SingleTaskWeighting": "fixed", "StaticWeighting": "fixed",
    "DynamicWeighting": "dynamic", "NaiveDynamicWeighting": "dynamic", "WeightUnit": "dynamic",
    "DYNAMIC_VARIANTS": "variants",
    "DWAWeighting": "baselines", "GradNormWeighting": "baselines", "UncertaintyWeighting": "baselines",
    "SINGLE_PREFIX": "options", "WeightingChoice": "options", "parse_weighting": "options",
    "weighting_names": "options",
    "WEIGHTINGS": "registry", "build_strategy": "registry", "build_weighting": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.weighting' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.weighting.{module}"), name)
