"""The continuity benchmark's pooling: agreement weighted by pairs over the scripts, chance from the pooled
readings' variant shares, and the chance-corrected table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.bench_continuity import markdown, pooled


def _report(palette: list[int], trousers: list[dict[str, int]], agreement: float, pairs: int) -> SimpleNamespace:
    shots = [SimpleNamespace(predicted_palette=p, predicted_trousers=t) for p, t in zip(palette, trousers, strict=True)]
    fields = {}
    for name in ("palette", "trousers"):
        for term in ("short_term", "long_term"):
            fields[f"{name}_continuity_{term}"] = agreement
            fields[f"n_{name}_{term}_pairs"] = pairs
    return SimpleNamespace(shots=shots, **fields)


def test_pooled_weights_by_pairs_and_corrects_for_chance():
    a = _report([0, 0, 1, None], [{"c1": 0}, {"c1": 0, "c2": 0}, {}, {"c2": 0}], agreement=1.0, pairs=3)
    b = _report([2, 2, 2, 2], [{"c1": 1}, {}, {}, {"c1": 1}], agreement=0.5, pairs=1)
    rows = pooled([a, b])
    palette = rows["palette_long_term"]
    assert palette["agreement"] == pytest.approx((3 * 1.0 + 1 * 0.5) / 4) and palette["pairs"] == 4
    # palette readings 0, 0, 1, 2, 2, 2, 2 (the shot read as None is no reading)
    chance = (2 / 7) ** 2 + (1 / 7) ** 2 + (4 / 7) ** 2
    assert palette["chance"] == pytest.approx(chance)
    assert palette["kappa"] == pytest.approx((0.875 - chance) / (1 - chance))
    trousers = rows["trousers_short_term"]  # readings 0, 0, 0, 0, 1, 1
    assert trousers["chance"] == pytest.approx((4 / 6) ** 2 + (2 / 6) ** 2)
    text = markdown({"movie": rows})
    assert "| movie | 0.875 (4) |" in text and f"| movie | {palette['kappa']:.3f} ({chance:.3f}) |" in text


def test_one_variant_everywhere_has_no_chance_corrected_agreement():
    rows = pooled([_report([1, 1], [{"c": 2}, {"c": 2}], agreement=1.0, pairs=1)])
    assert rows["palette_short_term"]["chance"] == pytest.approx(1.0)
    assert rows["palette_short_term"]["kappa"] is None
    assert "n/a (1.000)" in markdown({"movie": rows})
