"""A weighting method block (``params.yaml`` ``finetune.methods.<m>`` minus its ``weighting`` key): validation,
defaults and the strategy it selects. Standard library only: params validation runs it without torch.

:func:`parse_weighting` is the one place where each option and its default is declared; it returns a
:class:`WeightingChoice` that :func:`pipeline.weighting.registry.build_weighting` turns into the strategy. Names
and options (defaults, and where each comes from, in brackets):

- ``single_<task>`` (e.g. ``single_identity``): one-hot weights; no options.
- ``static``: ``weights`` [``1/T`` each: 0.5/0.5 for two tasks, docs/method.md §9.30], ``T`` numbers ≥ 0, not all 0.
- ``equal``: all weights 1; no options.
- ``dynamic`` (the paper's unit): ``variant`` [``fer``, docs/method.md §9.6] ∈ {fer, cavi, webcari}; ``sigma`` [0.01,
  docs/method.md §3] > 0; ``detach_weights`` [false, as coded: docs/method.md §9.5]; ``lr_weights`` [the variant's,
  docs/method.md §3: 0.1 for fer, null for cavi/webcari]: a constant LR of the unit's optimiser, or null = the network's
  LR × ``lr_weights_factor`` [null = the variant's: 1 for fer/cavi, 10 for webcari] (> 0); ``base`` [zeros, the
  original's ``loss_weight_base_t``]: ``T`` offsets.
- ``naive_dynamic``: ``base`` [zeros]; the FC trains with the network.
- ``uncertainty``: no options.
- ``dwa``: ``temperature`` [2.0: Liu et al. 2019; LibMTL's ``--T`` default] > 0.
- ``gradnorm``: ``alpha`` [1.5: LibMTL's ``--alpha`` default] ≥ 0; ``lr_weights`` [0.025: ours, Chen et al. 2018 give
  no rate for the weights] > 0; ``update`` [``gradient_step``]: ``gradient_step`` = Chen et al.'s Algorithm 1, a
  plain gradient step ``w ← w − lr_weights · ∇_w L_grad`` (no momentum, no clipping) then renormalise to
  ``Σ w = T``; ``weights_optimizer`` = step ``w`` with ``finetune.common.weights_optimizer`` (the dynamic unit's TF1
  RMSProp, momentum carried across the renormalisation, clipped to its ``clip_norm``: this project's behaviour
  before), then renormalise.

:func:`weighting_options` lists the options a weighting reads (``params.yaml`` writes every one of them out in each
method block, so ``dvc exp run -S`` can set any without ``+``; tests/test_params_file.py checks it).

Every problem raises :class:`ValueError` with one line that names the method, the option and what is allowed, e.g.
``weighting 'dynamic': option 'variant' is 'foo'; choose one of: fer, cavi, webcari``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.weighting.variants import DYNAMIC_VARIANTS, VARIANTS

__all__ = ["OWN_UPDATES", "SINGLE_PREFIX", "STRATEGIES", "OptionReader", "WeightingChoice", "parse_weighting",
           "weighting_names", "weighting_options"]

#: prefix of the single-task names (``single_<task>``)
SINGLE_PREFIX = "single_"
#: how a strategy's own parameters (GradNorm's weights) are updated: a plain gradient step ``θ ← θ − lr·∇θ`` (no
#: momentum, no clipping; GradNorm's Algorithm 1), or the settings' ``weights_optimizer`` (clipped to its
#: ``clip_norm``)
OWN_UPDATES = ("gradient_step", "weights_optimizer")

_MISSING = object()


class OptionReader:
    """Reads typed, range-checked options of one method and rejects the ones nobody read.

    Usage::

        opts = OptionReader("dynamic", options)
        sigma = opts.number("sigma", 0.01, low=0.0, low_open=True)
        opts.finish()            # unknown keys -> ValueError listing the allowed ones

    Args:
        method: the weighting's registry name (for the messages).
        options: the option mapping (None = no options).
    """

    def __init__(self, method: str, options: Mapping[str, Any] | None) -> None:
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"weighting {method!r}: options must be a mapping, got {type(options).__name__}")
        self.method = method
        self._options = dict(options)
        self._known: list[str] = []

    def _fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"weighting {self.method!r}: option {key!r} {problem}")

    @property
    def read(self) -> list[str]:
        """The option names asked for so far, in the order they were first asked for."""
        return list(self._known)

    def has(self, key: str) -> bool:
        """Whether ``key`` was given at all (a given ``None`` counts)."""
        return key in self._options

    def _get(self, key: str, default: Any) -> Any:
        if key not in self._known:
            self._known.append(key)
        return self._options.get(key, default)

    def number(self, key: str, default: float, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        """A finite real number (int or float, not bool) in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
        value = self._get(key, default)
        return self._check_number(key, value, low=low, high=high, low_open=low_open)

    def optional_number(self, key: str, default: float | None, *, low: float | None = None,
                        low_open: bool = False) -> float | None:
        """Like :meth:`number`, but ``None`` (YAML ``null``) is allowed and returned as is."""
        value = self._get(key, default)
        if value is None:
            return None
        return self._check_number(key, value, low=low, high=None, low_open=low_open, allow_null=True)

    def _check_number(self, key: str, value: Any, *, low: float | None, high: float | None, low_open: bool,
                      allow_null: bool = False) -> float:
        bound = _describe_range(low, high, low_open)
        null = " or null" if allow_null else ""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._fail(key, f"must be a finite number{bound}{null}, got {value!r}")
        value = float(value)
        if low is not None and (value < low or (low_open and value == low)):
            raise self._fail(key, f"must be a number{bound}{null}, got {value!r}")
        if high is not None and value > high:
            raise self._fail(key, f"must be a number{bound}{null}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false`` (no 0/1, no strings)."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices`` (case-sensitive string)."""
        value = self._get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self._fail(key, f"is {value!r}; choose one of: {', '.join(choices)}")
        return value

    def number_list(self, key: str, default: Sequence[float], length: int, *, low: float | None = None) -> list[float]:
        """A list of exactly ``length`` finite numbers, each ``>= low`` when given."""
        value = self._get(key, default)
        what = f"must be a list of {length} finite numbers" + (f" >= {low:g}" if low is not None else "")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != length:
            raise self._fail(key, f"{what} (one per task), got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise self._fail(key, f"{what}, got {value!r}")
            if low is not None and v < low:
                raise self._fail(key, f"{what}, got {value!r}")
            out.append(float(v))
        return out

    def finish(self) -> None:
        """Raise for any option that no reader asked for."""
        unknown = [k for k in self._options if k not in self._known]
        if unknown:
            allowed = ", ".join(self._known) if self._known else "none"
            raise ValueError(f"weighting {self.method!r}: unknown option {unknown[0]!r}; allowed options: {allowed}")


def _describe_range(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" <= {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}]"


@dataclass(frozen=True)
class WeightingChoice:
    """A validated method block: the strategy (``single``, ``static``, ``equal``, ``dynamic``, ``naive_dynamic``,
    ``uncertainty``, ``dwa``, ``gradnorm``) and its constructor's keyword arguments, every default filled in."""

    strategy: str
    arguments: dict[str, Any] = field(default_factory=dict)


def _static(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    weights = opts.number_list("weights", [1.0 / len(tasks)] * len(tasks), len(tasks), low=0.0)
    if not any(w > 0 for w in weights):
        raise ValueError(f"weighting 'static': option 'weights' must not be all zero, got {weights}")
    return {"weights": weights}


def _dynamic(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    variant = opts.choice("variant", "fer", DYNAMIC_VARIANTS)
    row = VARIANTS[variant]
    return {"variant": variant,
            "sigma": opts.number("sigma", 0.01, low=0.0, low_open=True),
            "detach_weights": opts.boolean("detach_weights", False),
            "lr_weights": opts.optional_number("lr_weights", row.lr_weights, low=0.0, low_open=True),
            "lr_weights_factor": _or_default(opts.optional_number("lr_weights_factor", None, low=0.0, low_open=True),
                                             row.lr_weights_factor),
            "base": opts.number_list("base", [0.0] * len(tasks), len(tasks))}


def _or_default(value: float | None, default: float) -> float:
    """``value``, or ``default`` when it is None (YAML empty: "the variant's")."""
    return default if value is None else value


def _naive(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    return {"base": opts.number_list("base", [0.0] * len(tasks), len(tasks))}


def _dwa(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    return {"temperature": opts.number("temperature", 2.0, low=0.0, low_open=True)}


def _gradnorm(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    return {"alpha": opts.number("alpha", 1.5, low=0.0),
            "lr_weights": opts.number("lr_weights", 0.025, low=0.0, low_open=True),
            "update": opts.choice("update", "gradient_step", OWN_UPDATES)}


def _none(opts: OptionReader, tasks: list[str]) -> dict[str, Any]:
    return {}


#: registry name → option parser (the single-task names are ``single_<task>``)
STRATEGIES: dict[str, Callable[[OptionReader, list[str]], dict[str, Any]]] = {
    "static": _static,
    "equal": _none,
    "dynamic": _dynamic,
    "naive_dynamic": _naive,
    "uncertainty": _none,
    "dwa": _dwa,
    "gradnorm": _gradnorm,
}


def weighting_names(task_names: Sequence[str]) -> list[str]:
    """The concrete names valid for these tasks (``single_identity``, …, ``static``, …)."""
    return [f"{SINGLE_PREFIX}{t}" for t in task_names] + list(STRATEGIES)


def weighting_options(name: str, task_names: Sequence[str]) -> list[str]:
    """The options the weighting ``name`` reads for ``task_names``, in the order its parser reads them (``[]`` for
    the single-task names and the strategies without options).

    Every parser reads each of its options whatever the others' values, so the list does not depend on them.

    Raises:
        ValueError: ``name`` is not a weighting for these tasks.
    """
    tasks = list(task_names)
    if name.startswith(SINGLE_PREFIX) and name[len(SINGLE_PREFIX):] in tasks:
        return []
    parser = STRATEGIES.get(name)
    if parser is None:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(weighting_names(tasks))}")
    opts = OptionReader(name, None)
    parser(opts, tasks)
    return opts.read


def parse_weighting(name: str, options: Mapping[str, Any] | None, task_names: Sequence[str]) -> WeightingChoice:
    """Validate the method block ``name`` + ``options`` for ``task_names`` (loss order) and fill in the defaults.

    Raises:
        ValueError: unknown name, unknown option or invalid value (one line each).
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
        return WeightingChoice("single", {"task": name[len(SINGLE_PREFIX):]})
    parser = STRATEGIES.get(name)
    if parser is None:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(weighting_names(tasks))}")
    arguments = parser(opts, tasks)
    opts.finish()
    return WeightingChoice(name, arguments)
