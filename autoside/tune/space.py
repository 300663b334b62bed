"""Search spaces: a family choice with a conditional sub-space per family, walked define-by-run by one function.

A space is a YAML file in ``search_spaces/``::

    name: mixed
    families:
      linear:
        dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
      full: {}
      losa:
        rank: {type: int, low: 4, high: 64, log: true}
        mixer: {type: categorical, choices: [mlp, conv]}
        depth: 4                      # a plain value fixes a knob (not searched)
      cst:
        stage_prune_ratios:           # a list knob: each element searched (or fixed) on its own
          - 0.25
          - {type: float, low: 0.0, high: 0.75, step: 0.25}

Each searched knob is one of Optuna's three distributions (float, int, categorical, with ``log`` / ``step``).
:meth:`SearchSpace.suggest` walks the space define-by-run: first ``family``, then only that family's knobs, named
``<family>/<knob>`` (e.g. ``dtl/rank``; an element of a list knob ``<family>/<knob>/<index>``). The same function
replays a finished trial's parameters through ``optuna.trial.FixedTrial`` (:meth:`SearchSpace.config_from_params`),
so there is one path from parameters to architecture. Everything is validated when the file is loaded, with one
message per problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoside.config import load_yaml
from autoside.errors import ConfigError
from autoside.sidenets import SideConfig, get_family, list_families
from autoside.tune.dedup import canonical_float

_TYPES = ("float", "int", "categorical")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices"}
_TOP_KEYS = {"name", "description", "families"}


@dataclass(frozen=True)
class Param:
    """One searched knob: an Optuna float / int / categorical distribution."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, prefix: str) -> Any:
        key = f"{prefix}/{self.name}"
        if self.type == "float":
            return self.on_grid(trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step))
        if self.type == "int":
            return trial.suggest_int(key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(key, list(self.choices))

    def on_grid(self, value: Any) -> Any:
        """A stepped float at its grid value. Samplers return them off the grid by a rounding error (GP:
        0.19999999999999996 for 0.2, 6.9e-18 for 0.0); the config gets the grid value, so equal choices are one
        configuration."""
        if self.type != "float" or self.step is None:
            return value
        return canonical_float(self.low + round((value - self.low) / self.step) * self.step)

    def distribution(self) -> Any:
        """The knob as the Optuna distribution :meth:`suggest` asks for (a sub-study asks with it)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(list(self.choices))

    def count(self) -> int | None:
        """How many values the knob can take (``None``: a continuous float)."""
        if self.type == "categorical":
            return len(self.choices)
        if self.type == "float" and self.step is None:
            return None
        return int((self.high - self.low) / (self.step or 1) + 1e-9) + 1

    def values(self) -> list[Any]:
        """Every value the knob can take, on its grid (a finite knob only; see :meth:`count`)."""
        if self.type == "categorical":
            return list(self.choices)
        step = self.step or 1
        values = [self.low + i * step for i in range(self.count() or 0)]
        return [canonical_float(v) for v in values] if self.type == "float" else [int(v) for v in values]

    def corners(self) -> list[Any]:
        """Values that validation builds a config with: both ends of a range, every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class FamilySpace:
    """The knobs searched (and fixed) for one family. A list knob with searched elements is kept in ``fixed`` as a
    tuple whose searched elements are their :class:`Param` (also listed in ``params``, named ``<knob>/<index>``)."""

    family: str
    params: tuple[Param, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict, hash=False)

    def size(self) -> int | None:
        """Knob settings of the family (``None``: infinite, a float is continuous); knob-less is one. Settings that
        differ only in knobs shaping nothing build one configuration, so there may be fewer configurations."""
        counts = [p.count() for p in self.params]
        return None if None in counts else math.prod(counts)

    def grid(self) -> Iterator[dict[str, Any]]:
        """The parameters (``family`` and its knobs) of every configuration of the family (:meth:`size` finite)."""
        names = [f"{self.family}/{p.name}" for p in self.params]
        for combo in itertools.product(*(p.values() for p in self.params)):
            yield {"family": self.family, **dict(zip(names, combo, strict=True))}

    def kwargs(self, values: dict[str, Any]) -> dict[str, Any]:
        """The family's config keywords for the values of its params (list knobs put back together)."""
        out = {k: _fill(v, values) for k, v in self.fixed.items()}
        return {**out, **{k: v for k, v in values.items() if "/" not in k}}


def shaping_choices(params: dict[str, Any], unused: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The chosen family's knobs as ``knob[/i] -> value``, less the ``unused`` ones (its config's
    :meth:`~autoside.sidenets.base.SideConfig.unused_knobs`): what a summary of a trial shows. A knob that shapes
    nothing (a conv kernel with no conv) would suggest a difference between two networks that is not there."""
    shown = {k.split("/", 1)[1]: v for k, v in SearchSpace.active(params).items() if k != "family"}
    return {k: v for k, v in shown.items() if k not in unused and k.split("/", 1)[0] not in unused}


def _searched(template: Any) -> bool:
    return isinstance(template, tuple) and any(isinstance(e, Param) for e in template)


def _fill(template: Any, values: dict[str, Any]) -> Any:
    return [values[e.name] if isinstance(e, Param) else e for e in template] if _searched(template) else template


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; see the module docstring for the file format."""

    name: str
    families: tuple[FamilySpace, ...]
    description: str = ""

    @property
    def family_names(self) -> list[str]:
        return [f.family for f in self.families]

    def suggest(self, trial: Any, *, flat: bool = False) -> SideConfig:
        """Walk the space define-by-run on an Optuna ``Trial`` (or ``FixedTrial``) and build the side config.

        ``flat``: suggest every family's knobs on every trial and ignore those of the families not chosen. GP and
        NSGA-II model only the parameters that all trials share; on a conditional space that is ``family`` alone and
        every knob would be sampled at random. Flat, every knob is shared, so they model all of them.
        """
        name = trial.suggest_categorical("family", self.family_names)
        kwargs: dict[str, Any] = {}
        for fam in self.families:
            if fam.family == name or flat:
                values = {param.name: param.suggest(trial, fam.family) for param in fam.params}
                if fam.family == name:
                    kwargs = fam.kwargs(values)
        return get_family(name).config_class.from_dict(kwargs)

    @staticmethod
    def active(params: dict[str, Any]) -> dict[str, Any]:
        """The parameters that make the configuration: ``family`` and the chosen family's knobs (a flat walk also
        holds the other families' unused knobs)."""
        family = params.get("family")
        return {k: v for k, v in params.items() if k == "family" or k.startswith(f"{family}/")}

    def on_grid(self, params: dict[str, Any]) -> dict[str, Any]:
        """Trial parameters with each stepped float at its grid value (see :meth:`Param.on_grid`): what a repeat's
        console line shows."""
        knobs = {f"{fam.family}/{p.name}": p for fam in self.families for p in fam.params}
        return {k: knobs[k].on_grid(v) if k in knobs else v for k, v in params.items()}

    def config_from_params(self, params: dict[str, Any]) -> SideConfig:
        """Replay a trial's parameters through :meth:`suggest` (export uses this to rebuild a trial's config)."""
        import optuna

        return self.suggest(optuna.trial.FixedTrial(dict(params)))

    def to_dict(self) -> dict[str, Any]:
        families = {}
        for fam in self.families:
            knobs: dict[str, Any] = {}
            for p in fam.params:  # in the file's order, a list knob where its first searched element is
                knob = p.name.split("/", 1)[0]
                knobs[knob] = knobs.get(knob) or (
                    [e.to_dict() if isinstance(e, Param) else e for e in fam.fixed[knob]]
                    if "/" in p.name
                    else p.to_dict()
                )
            families[fam.family] = {**knobs, **{k: v for k, v in fam.fixed.items() if k not in knobs}}
        out: dict[str, Any] = {"name": self.name, "families": families}
        if self.description:
            out["description"] = self.description
        return out

    def check_backbone(self, spec: Any, frames: int | None = None) -> None:
        """Reject, before a search starts, knob ranges the backbone cannot take (e.g. a rank above its width, a
        block index past its depth, a ViT-only family on a CNN) or, with ``frames`` (a video recipe's clip
        length), more frames than a clip holds: the corner configs of every family are checked with the family's
        own ``check_backbone`` and ``check_clips``."""
        problems: list[str] = []
        for fam in self.families:
            _check_corners(fam, problems, spec=spec, frames=frames)
        if problems:
            joined = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
            raise ConfigError(f"search space {self.name!r} on backbone {spec.name!r}: {joined}")

    def size(self) -> int | None:
        """Knob settings in the space, at least its distinct configurations (``None``: infinite, some float is
        continuous); see :meth:`FamilySpace.size`."""
        sizes = [fam.size() for fam in self.families]
        return None if None in sizes else sum(sizes)

    def grid(self) -> Iterator[dict[str, Any]]:
        """The parameters of every configuration of a finite space (:meth:`size` is not ``None``), family by family."""
        for fam in self.families:
            yield from fam.grid()


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space YAML (a malformed file reports its line)."""
    data = load_yaml(path, what="search space")
    data.setdefault("name", Path(path).stem)
    return space_from_dict(data, source=str(path))


def space_from_dict(data: dict[str, Any], *, source: str = "search space") -> SearchSpace:
    """Validate ``data``; every problem found is listed, one per line, in a single :class:`ConfigError`."""
    problems: list[str] = []
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(f"{key}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    families_data = data.get("families")
    families: list[FamilySpace] = []
    if not isinstance(families_data, dict) or not families_data:
        problems.append("families: expected a mapping of family names to their knobs, e.g. families: {linear: {}}")
        families_data = {}
    known = list_families()
    for name, knobs in families_data.items():
        if name not in known:
            problems.append(f"families.{name}: unknown family {name!r} (allowed: {', '.join(known)})")
            continue
        fam = _family_space(str(name), knobs, problems)
        if fam is not None:
            families.append(fam)
    if not problems:
        for fam in families:
            _check_corners(fam, problems)
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"{source}: {problems[0]}")
        raise ConfigError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(problems))
    return SearchSpace(
        name=str(data.get("name", "space")), families=tuple(families), description=str(data.get("description", ""))
    )


def _family_space(name: str, knobs: Any, problems: list[str]) -> FamilySpace | None:
    if knobs is None:
        knobs = {}
    if not isinstance(knobs, dict):
        problems.append(f"families.{name}: expected a mapping of knobs (or {{}}), got {knobs!r}")
        return None
    config_class = get_family(name).config_class
    allowed = [f.name for f in dataclasses.fields(config_class) if f.init]
    params, fixed = [], {}
    for knob, spec in knobs.items():
        where = f"families.{name}.{knob}"
        if knob not in allowed:
            have = ", ".join(allowed) if allowed else "none"
            problems.append(f"{where}: family {name!r} has no parameter {knob!r} (its parameters: {have})")
            continue
        if isinstance(spec, dict):
            param = _param(knob, spec, where, problems)
            if param is not None:
                params.append(param)
        elif isinstance(spec, list) and any(isinstance(e, dict) for e in spec):
            elements = [
                _param(f"{knob}/{i}", e, f"{where}[{i}]", problems) if isinstance(e, dict) else e
                for i, e in enumerate(spec)
            ]
            if all(e is not None or not isinstance(raw, dict) for e, raw in zip(elements, spec)):
                fixed[knob] = tuple(elements)
                params += [e for e in elements if isinstance(e, Param)]
        else:
            fixed[knob] = spec
    return FamilySpace(family=name, params=tuple(params), fixed=fixed)


def _param(knob: str, spec: dict[str, Any], where: str, problems: list[str]) -> Param | None:
    before = len(problems)
    for key in sorted(set(spec) - _PARAM_KEYS):
        problems.append(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(_PARAM_KEYS))})")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in _TYPES:
        problems.append(f"{where}.type: expected one of {', '.join(_TYPES)}, got {kind!r}")
        return None
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: expected a non-empty list of values, got {choices!r}")
        elif any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            problems.append(f"{where}.choices: values must be strings, numbers, booleans or null")
        elif len({repr(c) for c in choices}) != len(choices):
            problems.append(f"{where}.choices: contains duplicates")
        for key in ("low", "high", "log", "step"):
            if key in spec:
                problems.append(f"{where}.{key}: not allowed for a categorical parameter (use choices)")
        return None if len(problems) > before else Param(knob, "categorical", choices=tuple(choices))
    if "choices" in spec:
        problems.append(f"{where}.choices: only for type categorical")
    number = int if kind == "int" else (int, float)
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            problems.append(f"{where}.{key}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log: expected true or false, got {log!r}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        problems.append(f"{where}.step: expected a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    if len(problems) > before:
        return None
    if low > high:
        problems.append(f"{where}: low ({low}) is greater than high ({high})")
    if log and low <= 0:
        problems.append(f"{where}: log scale needs low > 0, got {low}")
    if log and step is not None and not (kind == "int" and step == 1):
        problems.append(f"{where}: log and step cannot be combined (Optuna's rule)")
    if len(problems) > before:
        return None
    return Param(
        knob,
        kind,
        low=float(low) if kind == "float" else int(low),
        high=float(high) if kind == "float" else int(high),
        log=log,
        step=None if step is None else (float(step) if kind == "float" else int(step)),
    )


def _check_corners(fam: FamilySpace, problems: list[str], spec: Any = None, frames: int | None = None) -> None:
    """Build the family's config at the ends of every range (and each choice) so that a knob value the family
    itself rejects (its ``__post_init__``) fails now, not in the middle of a search."""
    config_class = get_family(fam.family).config_class
    values = [p.corners() for p in fam.params]
    first = tuple(v[0] for v in values)
    # The first combinations of all knobs, then every other corner of each knob (the product alone, cut at 256,
    # would never reach the last choices of the first knobs of a large family).
    each = (first[:i] + (c,) + first[i + 1 :] for i, v in enumerate(values) for c in v[1:])
    combos = itertools.chain(itertools.islice(itertools.product(*values), 256), each)
    for combo in combos:
        kwargs = fam.kwargs({p.name: v for p, v in zip(fam.params, combo)})
        try:
            config = config_class.from_dict(kwargs, field=f"families.{fam.family}")
            if spec is not None:
                config.check_backbone(spec)
            if frames is not None:
                config.check_clips(frames)
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith(f"families.{fam.family}"):
                message = f"families.{fam.family}: {message}"
            if combo:
                message += f" (at {', '.join(f'{p.name}={v!r}' for p, v in zip(fam.params, combo))})"
            problems.append(message)
            return
