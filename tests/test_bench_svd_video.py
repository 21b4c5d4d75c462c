"""The full-size video speed benchmark runs its code path on tiny SVD-shaped parts (the GPU runs it at full size)."""

from __future__ import annotations

from benchmarks.bench_svd_video import main


def test_the_video_benchmark_draws_the_same_clip_as_the_stock_pipeline():
    result = main(["--size", "tiny", "--device", "cpu", "--frames", "4", "--steps", "2", "--repeats", "1",
                   "--no-write"])
    rows = result["rows"]
    assert list(rows) == ["diffusers StableVideoDiffusionPipeline", "mdream ImageToVideoPipeline",
                          "mdream, channels-last"]  # the compiled row needs CUDA
    assert all(row["frames"] == 4 and row["seconds"] > 0 for row in rows.values())
    # the same clip: only the image encoder's resize differs from the stock pipeline's, and channels-last changes
    # the memory layout, not what is computed (random 8-bit frames differ by up to 255 grey levels)
    assert rows["mdream ImageToVideoPipeline"]["difference"] < 3.0
    assert abs(rows["mdream, channels-last"]["difference"] - rows["mdream ImageToVideoPipeline"]["difference"]) < 0.05
