"""The stage-memory benchmark counts what each stage's models put on the device, with and without --offload."""

from __future__ import annotations

from benchmarks.bench_stage_memory import STAGES, build, stage_rows, weight_bytes
from mdream.models.offload import OffloadGroup


def test_offload_keeps_the_small_parts_and_the_largest_unit():
    models = build("tiny")
    rows = {r["stage"]: r for r in stage_rows(models)}
    assert list(rows) == list(STAGES)
    running = 0
    for stage, names in STAGES.items():
        total = sum(weight_bytes(models[n], 2) for n in names)
        running += total
        assert rows[stage]["total"] == total and rows[stage]["kept"] == running
        assert 0 < rows[stage]["offload"] <= total
    # a stage with several units holds less with --offload; the group's own units are the ones counted
    assert rows["video"]["offload"] < rows["video"]["total"]
    group = OffloadGroup("cpu")
    group.add("video", models["video"])
    units = {name: weight_bytes(unit, 2) for name, unit in group.units.items()}
    assert sorted(units) == ["video.image_encoder", "video.unet", "video.vae"]
    assert rows["video"]["offload"] == rows["video"]["total"] - sum(units.values()) + max(units.values())
