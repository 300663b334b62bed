"""The accuracy / memory Pareto set of a search: non-dominated filter, hypervolume, knee point, budget pick, plot.

Conventions: a *point* is a tuple of objective values; ``senses`` says per objective whether it is maximised
(``"max"``) or minimised (``"min"``). A *record* is anything with ``trial_id``, ``status`` and ``metrics`` (see
:class:`autoside.tune.results.TrialRecord`); only ``status == "ok"`` records within the budget take part in a front.

Hypervolume is computed on normalised objectives so that it is a number in [0, 1] that compares across searches
of the same space and budget: accuracy stays as it is (reference 0), memory is divided by the reference memory
(the budget when there is one, else 1.1 x the largest memory seen) with reference 1; a third objective (trainable
parameters) is divided the same way by its own reference. 2-D is computed exactly by a sweep; 3-D and more use
Optuna's exact WFG implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoside.errors import AutosideError

Point = Sequence[float]

# Objective name -> (key in TrialResult metrics, sense)
OBJECTIVES = {
    "accuracy": ("val_accuracy", "max"),
    "memory": ("peak_memory_bytes", "min"),
    "params": ("trainable_params", "min"),
}


def dominates(a: Point, b: Point, senses: Sequence[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, sense in zip(a, b, senses):
        if sense == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated(points: Sequence[Point], senses: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates of a front point are all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)]


def _minimised(points: Sequence[Point], senses: Sequence[str], reference: Point) -> list[list[float]]:
    """Map points to a minimisation problem whose reference point is the origin's opposite corner (all 0)."""
    out = []
    for p in points:
        row = []
        for x, sense, ref in zip(p, senses, reference):
            row.append(ref - x if sense == "max" else x - ref)  # <= 0 when better than the reference
        out.append(row)
    return out


def hypervolume(points: Sequence[Point], senses: Sequence[str], reference: Point) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (points not better than it add nothing)."""
    pts = [p for p in _minimised(points, senses, reference) if all(v < 0 for v in p)]
    if not pts:
        return 0.0
    if len(senses) == 2:
        # Sweep over the first objective; each new point adds a rectangle under the best second objective so far.
        pts.sort()
        volume, best_y = 0.0, 0.0
        for x, y in pts:
            if y < best_y:
                volume += (0.0 - x) * (best_y - y)
                best_y = y
        return volume
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(pts, dtype=float), np.zeros(len(senses))))


def objective_keys(objectives: Sequence[str]) -> tuple[list[str], list[str]]:
    keys = [OBJECTIVES[o][0] for o in objectives]
    senses = [OBJECTIVES[o][1] for o in objectives]
    return keys, senses


def feasible(records: Sequence[Any], budget_bytes: int | None) -> list[Any]:
    """Trials that finished (``ok``) and whose measured peak memory is within the budget."""
    out = []
    for r in records:
        if r.status != "ok" or not r.metrics:
            continue
        if budget_bytes is not None and r.metrics["peak_memory_bytes"] > budget_bytes:
            continue
        out.append(r)
    return out


def pareto_front(
    records: Sequence[Any], objectives: Sequence[str] = ("accuracy", "memory"), budget_bytes: int | None = None
) -> list[Any]:
    """The non-dominated feasible records, sorted by memory; a configuration recorded twice is listed once (its
    first trial)."""
    from autoside.tune.dedup import config_key

    pool, keys_seen = [], set()
    for r in sorted(feasible(records, budget_bytes), key=lambda r: r.trial_id):
        key = config_key(r.config)
        if key not in keys_seen:
            keys_seen.add(key)
            pool.append(r)
    keys, senses = objective_keys(objectives)
    points = [[float(r.metrics[k]) for k in keys] for r in pool]
    front = [pool[i] for i in non_dominated(points, senses)]
    return sorted(front, key=lambda r: (r.metrics["peak_memory_bytes"], r.trial_id))


def normalised_reference(records: Sequence[Any], objectives: Sequence[str], budget_bytes: int | None) -> list[float]:
    """Reference values (un-normalised) used by :func:`search_hypervolume`; see the module docstring."""
    keys, _ = objective_keys(objectives)
    refs = []
    for obj, key in zip(objectives, keys):
        if obj == "accuracy":
            refs.append(0.0)
        elif obj == "memory" and budget_bytes is not None:
            refs.append(float(budget_bytes))
        else:
            seen = [float(r.metrics[key]) for r in records if r.metrics and key in r.metrics]
            refs.append(1.1 * max(seen) if seen else 1.0)
    return refs


def search_hypervolume(
    records: Sequence[Any],
    objectives: Sequence[str] = ("accuracy", "memory"),
    budget_bytes: int | None = None,
    reference: Sequence[float] | None = None,
) -> float:
    """Normalised hypervolume (in [0, 1]) of the feasible records of a search."""
    keys, senses = objective_keys(objectives)
    reference = list(reference) if reference is not None else normalised_reference(records, objectives, budget_bytes)
    pool = feasible(records, budget_bytes)
    points = []
    for r in pool:
        row = []
        for key, sense, ref in zip(keys, senses, reference):
            value = float(r.metrics[key])
            row.append(value if sense == "max" else value / ref)
        points.append(row)
    norm_ref = [ref if sense == "max" else 1.0 for sense, ref in zip(senses, reference)]
    return hypervolume(points, senses, norm_ref)


def knee_point(front: Sequence[Any], objectives: Sequence[str] = ("accuracy", "memory")) -> Any | None:
    """The front's knee: after min-max normalising accuracy and memory over the front, the member farthest from the
    straight line joining the two extremes (lowest memory, highest accuracy). Ties go to the lowest trial id; a front
    of one or two members returns the most accurate member (lowest trial id among equals)."""
    if not front:
        return None
    keys, _ = objective_keys(objectives[:2])
    acc = [float(r.metrics[keys[0]]) for r in front]
    mem = [float(r.metrics[keys[1]]) for r in front]
    if len(front) <= 2:
        return min(front, key=lambda r: (-float(r.metrics[keys[0]]), r.trial_id))

    def scale(values: list[float]) -> list[float]:
        lo, hi = min(values), max(values)
        return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in values]

    a, m = scale(acc), scale(mem)
    # Extremes of the normalised front: (m=0, a=a_min_mem) and (m=1, a=1); distance to the line through them.
    i0 = min(range(len(front)), key=lambda i: (m[i], -a[i]))
    i1 = max(range(len(front)), key=lambda i: (a[i], -m[i]))
    (x0, y0), (x1, y1) = (m[i0], a[i0]), (m[i1], a[i1])
    length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 or 1.0

    def distance(i: int) -> float:
        # Signed: positive above the line (more accuracy for the memory than the chord), which is the knee side.
        return ((x1 - x0) * (a[i] - y0) - (y1 - y0) * (m[i] - x0)) / length

    return min(front, key=lambda r: (-round(distance(front.index(r)), 12), r.trial_id))


def select_by_budget(records: Sequence[Any], budget_bytes: int) -> Any:
    """The most accurate finished trial whose measured peak memory fits ``budget_bytes`` (ties: less memory, then
    lower trial id)."""
    from autoside.units import format_bytes

    pool = feasible(records, budget_bytes)
    if not pool:
        raise AutosideError(f"no trial fits in {format_bytes(budget_bytes)}")
    return min(pool, key=lambda r: (-r.metrics["val_accuracy"], r.metrics["peak_memory_bytes"], r.trial_id))


def plot(
    records: Sequence[Any], front: Sequence[Any], path: str | Path, *, budget_bytes: int | None = None, title: str = ""
) -> Path:
    """Accuracy vs measured peak memory of every trial; the front highlighted, infeasible trials crossed, the budget
    drawn as a vertical line. Written with matplotlib's Agg backend (no display needed)."""
    import matplotlib

    path = Path(path)
    if path.is_dir():
        raise AutosideError(f"--plot {path}: is a folder; give a file name, e.g. {path / 'pareto.png'}")
    if not path.parent.is_dir():
        raise AutosideError(f"--plot {path}: the folder {path.parent} does not exist")
    if not path.suffix:
        path = path.with_suffix(".png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    draw(ax, records, front, budget_bytes=budget_bytes, title=title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix[1:])  # then renamed: a reader never sees half a file
        tmp.replace(path)
    except ValueError as exc:  # a format matplotlib cannot write
        raise AutosideError(f"--plot {path}: {exc}") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def draw(ax: Any, records: Sequence[Any], front: Sequence[Any], *, budget_bytes: int | None, title: str) -> None:
    """The plot of :func:`plot` on a matplotlib ``Axes``."""
    mib = 1024**2
    ok = [r for r in records if r.status == "ok" and r.metrics]
    bad = [r for r in records if r.status == "infeasible" and r.metrics]
    front_ids = {r.trial_id for r in front}
    others = [r for r in ok if r.trial_id not in front_ids]
    if others:
        ax.scatter(
            [r.metrics["peak_memory_bytes"] / mib for r in others],
            [r.metrics["val_accuracy"] for r in others],
            c="tab:gray",
            alpha=0.6,
            label="trials",
        )
    if bad:
        # No accuracy (never finished): drawn at their memory (measured at the stop, or predicted) on the x axis.
        ax.scatter(
            [r.metrics["peak_memory_bytes"] / mib for r in bad],
            [0.0] * len(bad),
            transform=ax.get_xaxis_transform(),
            marker="v",
            c="tab:red",
            s=40,
            clip_on=False,
            zorder=4,
            label="infeasible (memory at the stop)",
        )
    if front:
        xs = [r.metrics["peak_memory_bytes"] / mib for r in front]
        ys = [r.metrics["val_accuracy"] for r in front]
        ax.step(xs, ys, where="post", c="tab:blue", alpha=0.5)
        ax.scatter(xs, ys, c="tab:blue", s=50, zorder=3, label="Pareto front")
        for r, x, y in zip(front, xs, ys):
            ax.annotate(
                f"{r.trial_id} {r.config.get('family', '')}",
                (x, y),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if budget_bytes is not None:
        ax.axvline(budget_bytes / mib, c="tab:red", ls="--", label=f"budget {budget_bytes / mib:.0f} MiB")
    ax.set_xlabel("measured peak training memory (MiB)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "accuracy vs memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
