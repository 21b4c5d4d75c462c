"""The full-size AR decoding benchmark runs its code path on a tiny Llama (the GPU runs it at full size)."""

from __future__ import annotations

from benchmarks.bench_ar_decode import main


def test_the_decoding_benchmark_times_keyframes_and_the_weight_read():
    result = main(["--size", "tiny", "--device", "cpu", "--keyframes", "3", "--no-write"])
    assert result["forwards_per_keyframe"] == 2  # the shot's conditioning chunk, then the second token
    assert result["ms_per_keyframe"] > 0 and result["weight_read_ms"] > 0
    assert abs(result["ms_per_forward"] * 2 - result["ms_per_keyframe"]) < 1e-9
