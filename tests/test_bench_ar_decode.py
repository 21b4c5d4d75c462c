"""The full-size AR decoding benchmark runs its code path on a tiny Llama (the GPU runs it at full size)."""

from __future__ import annotations

from benchmarks.bench_ar_decode import main


def test_the_decoding_benchmark_times_each_kv_cache_against_the_weight_read():
    runs = main(["--size", "tiny", "--device", "cpu", "--keyframes", "3", "--no-write"])
    assert list(runs) == ["dynamic", "static"]  # graphs need CUDA
    for run in runs.values():
        assert run["forwards_per_keyframe"] == 2  # the shot's conditioning chunk, then the second token
        assert run["ms_per_keyframe"] > 0 and run["weight_read_ms"] > 0
        assert abs(run["ms_per_forward"] * 2 - run["ms_per_keyframe"]) < 1e-9
    assert runs["dynamic"]["max_token_difference"] == 0.0
    assert runs["static"]["max_token_difference"] < 1e-3  # the same movie through the static cache
