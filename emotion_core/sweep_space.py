"""The search space of a training sweep: a small YAML (or JSON) file, validated into plain data.

A space names the preset every trial starts from, the ``TrainConfig`` fields a trial may change
(each a fixed value, a list of choices, or a numeric range), the Optuna sampler and pruner, and
trials to run first (``enqueue``; ``{}`` is the preset itself, a baseline the sweep cannot do worse
than). Optuna itself is only used by the caller, through :func:`suggest` and the ``sampler`` and
``pruner`` specs; nothing here imports it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .models import model_names
from .train import PRESETS, TrainConfig

#: TrainConfig fields a trial may not change: they decide the data the trials are compared on.
FIXED_FIELDS = ("input_size", "seed")
#: Not searched: a trial trains its epochs whatever the machine (the sweep has its own time budget).
NOT_SEARCHED = ("budget_minutes",)
TRAINABLE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in FIXED_FIELDS + NOT_SEARCHED)
OBJECTIVES = ("val_accuracy", "val_loss")
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "successive_halving", "median", "percentile", "threshold", "none")

#: The documented default space: FER2013-sized trials of ~30 epochs on the cpu recipe.
DEFAULT_SPACE_TEXT = """\
# The default search space of `emotion sweep` (README: "Sweeps").
preset: cpu                 # every trial starts from this preset; the keys under params override it
objective: val_accuracy     # per epoch on the val split: what trials are pruned and ranked on
sampler: {type: tpe, seed: 1337}
pruner: {type: hyperband, min_resource: 5, reduction_factor: 3}
params:
  epochs: 30
  model: {choices: [vgg_lite, vgg_mid, vgg_wide]}
  learning_rate: {low: 3.0e-4, high: 3.0e-3, log: true}
  batch_size: {choices: [32, 64, 128]}
  label_smoothing: {low: 0.0, high: 0.2}
  weight_decay: {choices: [0.0, 0.01, 0.05]}
  crop: {choices: [32, 40, 48]}
  class_weight_power: {low: 0.0, high: 1.0}
enqueue:
  - {}                      # the preset itself (with epochs 30) first: the baseline
"""


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched field: ``value`` (fixed), ``choices``, or a ``low``..``high`` range (``log``, ``step``)."""

    name: str
    value: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False  # an int field: suggest_int

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    def contains(self, value: Any) -> bool:
        """Whether the search could draw ``value`` (one of the choices, or in the range and on its
        steps); Optuna refuses any other value for a queued or retried trial."""
        if self.choices is not None:
            return value in self.choices
        if self.low is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        steps = (value - self.low) / self.step if self.step else 0.0
        return abs(steps - round(steps)) <= 1e-8

    def domain(self) -> str:
        if self.choices is not None:
            return f"one of the choices {list(self.choices)}"
        step = f" in steps of {self.step}" if self.step else ""
        return f"a number from {self.low} to {self.high}{step}"


@dataclass(frozen=True)
class SearchSpace:
    preset: str
    objective: str
    params: tuple[Param, ...]
    sampler: dict = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict = field(default_factory=lambda: {"type": "hyperband"})
    enqueue: tuple[dict, ...] = ()
    source: str = "default space"

    @property
    def direction(self) -> str:
        return "minimize" if self.objective == "val_loss" else "maximize"

    def fingerprint(self) -> str:
        """Hash of everything that defines the search (not where the file lives)."""
        payload = json.dumps(
            [self.preset, self.objective, [p.__dict__ for p in self.params], self.sampler, self.pruner, self.enqueue],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def as_dict(self) -> dict:
        def param(p: Param):
            if p.fixed:
                return p.value
            if p.choices is not None:
                return {"choices": list(p.choices)}
            spec = {"low": p.low, "high": p.high}
            return {**spec, **({"log": True} if p.log else {}), **({"step": p.step} if p.step else {})}

        return {
            "preset": self.preset,
            "objective": self.objective,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "params": {p.name: param(p) for p in self.params},
            "enqueue": [dict(e) for e in self.enqueue],
        }

    def config(self, overrides: dict) -> TrainConfig:
        """The preset with the fixed params and a trial's ``overrides`` applied, resolved; without
        the preset's time budget (a trial trains its epochs; the sweep has its own budget)."""
        fixed = {p.name: p.value for p in self.params if p.fixed}
        return replace(PRESETS[self.preset], budget_minutes=None, **fixed, **overrides).resolved()


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Parse and check a space file (YAML or JSON); ``None`` gives the default space."""
    if path is None:
        return parse_space(yaml.safe_load(DEFAULT_SPACE_TEXT), "default space")
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpaceError(f"space file {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(f"space file {path}: not valid YAML or JSON{where}") from None
    return parse_space(data, f"space file {path}")


def parse_space(data: Any, source: str) -> SearchSpace:
    """Check a parsed space document; every error names ``source`` and the offending key."""

    def fail(key: str, message: str):
        raise SpaceError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with 'params', got {type(data).__name__}")
    unknown = set(data) - {"preset", "objective", "sampler", "pruner", "params", "enqueue"}
    if unknown:
        fail(sorted(unknown)[0], "unknown key (expected preset, objective, sampler, pruner, params, enqueue)")
    preset = data.get("preset", "cpu")
    if preset not in PRESETS:
        fail("preset", f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if PRESETS[preset].members:
        fail(
            "preset", f"{preset!r} trains an ensemble; a sweep tunes one network: start from a single network's preset"
        )
    objective = data.get("objective", "val_accuracy")
    if objective not in OBJECTIVES:
        fail("objective", f"{objective!r} is not one of {OBJECTIVES}")
    sampler = _typed_section(data.get("sampler", {"type": "tpe"}), "sampler", SAMPLERS, fail)
    pruner = _typed_section(data.get("pruner", {"type": "hyperband"}), "pruner", PRUNERS, fail)
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        fail("params", "expected a mapping of TrainConfig fields to values, choices or ranges")
    params = tuple(_param(name, spec, fail) for name, spec in raw_params.items())
    raw_enqueue = data.get("enqueue") or []
    if not isinstance(raw_enqueue, list) or not all(isinstance(e, dict) for e in raw_enqueue):
        fail("enqueue", "expected a list of mappings (trials to run first)")
    space = SearchSpace(preset, objective, params, sampler, pruner, tuple(raw_enqueue), source)
    searched = {p.name: p for p in params if not p.fixed}
    for i, trial in enumerate(raw_enqueue):
        for name, value in trial.items():
            key = f"enqueue[{i}].{name}"
            if name not in searched:
                fail(key, f"not a searched param (searched: {sorted(searched)})")
            _check_value(name, value, key, fail)
            _check_in_space(searched[name], value, key, fail)
    try:  # the preset with every fixed value applied must be a valid recipe
        space.config({})
    except (ValueError, TypeError) as exc:
        fail("params", str(exc))
    return space


def suggest(trial, space: SearchSpace) -> dict:
    """The overrides of one Optuna ``trial``: one ``suggest_*`` call per searched param."""
    overrides = {}
    for p in space.params:
        if p.fixed:
            continue
        if p.choices is not None:
            overrides[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.integer:
            overrides[p.name] = trial.suggest_int(p.name, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            overrides[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return overrides


def _typed_section(spec: Any, key: str, types: tuple[str, ...], fail) -> dict:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type") not in types:
        fail(f"{key}.type", f"expected one of {types}, got {spec!r}")
    return dict(spec)


_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _check_value(name: str, value: Any, key: str, fail) -> None:
    kind = _FIELD_TYPES[name]
    if name == "model" and value not in model_names():
        fail(key, f"unknown model {value!r}; choose one of {model_names()}")
    if "bool" in kind and not isinstance(value, bool):
        fail(key, f"expected true or false, got {value!r}")
    if ("int" in kind or "float" in kind) and value is not None and not isinstance(value, int | float):
        fail(key, f"expected a number, got {value!r}")
    if kind.startswith("int") and isinstance(value, float) and not value.is_integer():
        fail(key, f"expected a whole number, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        fail(key, f"expected a string, got {value!r}")


def _check_in_space(param: Param, value: Any, key: str, fail) -> None:
    if not param.contains(value):
        fail(key, f"expected {param.domain()}, got {value!r}")


def _param(name: str, spec: Any, fail) -> Param:
    key = f"params.{name}"
    if name in FIXED_FIELDS:
        fail(key, f"{name} is the same for every trial (it decides what trials are compared on)")
    if name not in TRAINABLE_FIELDS:
        fail(key, f"not a training parameter; choose from {list(TRAINABLE_FIELDS)}")
    if not isinstance(spec, dict):
        _check_value(name, spec, key, fail)
        return Param(name, value=spec)
    unknown = set(spec) - {"choices", "low", "high", "log", "step"}
    if unknown:
        fail(f"{key}.{sorted(unknown)[0]}", "unknown key (expected choices, or low/high with optional log, step)")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            fail(f"{key}.choices", "expected a non-empty list (and nothing else)")
        for value in spec["choices"]:
            _check_value(name, value, f"{key}.choices", fail)
        return Param(name, choices=tuple(spec["choices"]))
    if "low" not in spec or "high" not in spec:
        fail(key, "a range needs both low and high (or give choices, or a fixed value)")
    low, high = spec["low"], spec["high"]
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"{key}.{bound}", f"expected a number, got {value!r}")
        _check_value(name, value, f"{key}.{bound}", fail)
    if not low < high:
        fail(key, f"low must be below high, got {low} and {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        fail(f"{key}.log", "expected true or false; a log range needs low > 0")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float) or step <= 0):
        fail(f"{key}.step", f"expected a positive number, got {step!r}")
    integer = _FIELD_TYPES[name].startswith("int")
    low, high = (int(low), int(high)) if integer else (float(low), float(high))
    return Param(name, low=low, high=high, log=log, step=step, integer=integer)
