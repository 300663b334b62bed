"""Pareto utilities: non-dominated filter against brute force, exact hypervolume, knee point, budget pick, plot."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from autoside.errors import AutosideError
from autoside.tune.pareto import (
    dominates,
    hypervolume,
    knee_point,
    non_dominated,
    pareto_front,
    plot,
    search_hypervolume,
    select_by_budget,
)


@dataclass
class Rec:
    trial_id: str
    status: str
    metrics: dict
    config: dict = field(default_factory=lambda: {"family": "linear"})


def rec(i: int, acc: float, mem: int, status: str = "ok", params: int = 10) -> Rec:
    metrics = {"val_accuracy": acc, "peak_memory_bytes": mem, "trainable_params": params}
    return Rec(f"{i:04d}", status, metrics, {"family": "linear", "dropout": i / 100})


def test_non_dominated_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.random(), rng.randint(1, 20)) for _ in range(rng.randint(1, 30))]
        expected = [
            i
            for i, p in enumerate(pts)
            if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in pts)
        ]
        assert non_dominated(pts, ["max", "min"]) == expected


def test_duplicates_stay_on_the_front() -> None:
    assert non_dominated([(0.5, 1), (0.5, 1), (0.4, 2)], ["max", "min"]) == [0, 1]
    assert not dominates((0.5, 1), (0.5, 1), ["max", "min"])


def test_hypervolume_2d_exact() -> None:
    # Maximise x (reference 0), minimise y (reference 1): staircase of rectangles.
    pts = [(0.5, 0.2), (0.8, 0.6), (0.3, 0.1)]
    # sweep: 0.8*(1-0.6) + 0.5*(0.6-0.2) + 0.3*(0.2-0.1)
    assert hypervolume(pts, ["max", "min"], [0.0, 1.0]) == pytest.approx(0.32 + 0.2 + 0.03)
    assert hypervolume([(0.5, 2.0)], ["max", "min"], [0.0, 1.0]) == 0.0  # worse than the reference adds nothing
    assert hypervolume([], ["max", "min"], [0.0, 1.0]) == 0.0


def test_hypervolume_3d_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((6, 3))
    exact = hypervolume(pts.tolist(), ["min", "min", "min"], [1.0, 1.0, 1.0])
    samples = rng.random((200_000, 3))
    dominated = (samples[:, None, :] >= pts[None, :, :]).all(-1).any(-1)
    assert exact == pytest.approx(dominated.mean(), abs=0.01)


def test_front_excludes_infeasible_failed_and_over_budget() -> None:
    records = [
        rec(0, 0.9, 500),
        rec(1, 0.99, 50, "infeasible"),
        rec(2, 0.7, 100),
        rec(3, 0.95, 2000),
        rec(4, 0.6, 200),
        Rec("0005", "pruned", {"val_accuracy": 1.0, "peak_memory_bytes": 1}),
    ]
    front = pareto_front(records, budget_bytes=1000)
    assert [r.trial_id for r in front] == ["0002", "0000"]
    assert search_hypervolume(records, budget_bytes=1000) == pytest.approx(0.7 * 0.9 + 0.2 * 0.5)


def test_knee_point_is_deterministic() -> None:
    front = [rec(0, 0.50, 100), rec(1, 0.85, 200), rec(2, 0.90, 800), rec(3, 0.91, 1000)]
    assert knee_point(front).trial_id == "0001"
    # Two members at the same distance: the lower trial id wins, whatever the order.
    sym = [rec(5, 0.0, 0), rec(7, 0.75, 250), rec(4, 0.75, 250), rec(6, 1.0, 1000)]
    assert knee_point(sym).trial_id == "0004"
    assert knee_point(list(reversed(sym))).trial_id == "0004"
    assert knee_point([rec(1, 0.5, 10)]).trial_id == "0001"
    assert knee_point([]) is None


def test_select_by_budget() -> None:
    records = [rec(0, 0.9, 500), rec(1, 0.95, 900), rec(2, 0.95, 800), rec(3, 0.99, 100, "infeasible")]
    assert select_by_budget(records, 1000).trial_id == "0002"
    assert select_by_budget(records, 600).trial_id == "0000"
    with pytest.raises(AutosideError, match="no trial fits in 100 B"):
        select_by_budget(records, 100)


def test_plot_writes_png(tmp_path: Path) -> None:
    records = [rec(0, 0.9, 500 * 2**20), rec(1, 0.5, 100 * 2**20), rec(2, 0.0, 900 * 2**20, "infeasible")]
    out = plot(records, pareto_front(records), tmp_path / "p.png", budget_bytes=800 * 2**20)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # written whole, then renamed
    with pytest.raises(AutosideError, match="is a folder; give a file name"):
        plot(records, pareto_front(records), tmp_path)
    with pytest.raises(AutosideError, match="does not exist"):
        plot(records, pareto_front(records), tmp_path / "nowhere" / "p.png")
    assert plot(records, pareto_front(records), tmp_path / "q").name == "q.png"


def test_infeasible_trials_are_drawn_at_their_memory_with_their_own_marker() -> None:
    """An infeasible trial has no accuracy: it sits on the memory axis at the memory where it stopped, not at
    accuracy 0 among the trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoside.tune.pareto import draw

    bad = Rec("0002", "infeasible", {"peak_memory_bytes": 900 * 2**20})
    records = [rec(0, 0.9, 500 * 2**20), rec(1, 0.5, 100 * 2**20), bad]
    fig, ax = plt.subplots()
    draw(ax, records, pareto_front(records), budget_bytes=800 * 2**20, title="t")
    by_label = {c.get_label(): c for c in ax.collections}
    infeasible = next(c for label, c in by_label.items() if label.startswith("infeasible"))
    assert infeasible.get_offsets().tolist() == [[900.0, 0.0]]
    assert infeasible.get_offset_transform() == ax.get_xaxis_transform()  # y in axes units: on the axis
    front = by_label["Pareto front"]
    assert not np.array_equal(infeasible.get_paths()[0].vertices, front.get_paths()[0].vertices)
    plt.close(fig)


def test_front_lists_a_configuration_once() -> None:
    """Two records of one configuration (``0.30000000000000004`` is ``0.3``): the front keeps the first."""
    a = Rec("0001", "ok", {"val_accuracy": 0.9, "peak_memory_bytes": 100}, {"family": "linear", "dropout": 0.3})
    b = Rec("0004", "ok", {"val_accuracy": 0.9, "peak_memory_bytes": 100}, {"family": "linear", "dropout": 0.1 * 3})
    c = Rec("0005", "ok", {"val_accuracy": 0.95, "peak_memory_bytes": 200}, {"family": "full"})
    assert [r.trial_id for r in pareto_front([b, c, a])] == ["0001", "0005"]
