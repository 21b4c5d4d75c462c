"""The full-size pipeline benchmark runs its code path with tiny random components on the CPU (a GPU runs it at full
size): the bundle is built, saved and loaded by every stage, and the movie made with and without --offload."""

from __future__ import annotations

from benchmarks.bench_fullsize_pipeline import main


def test_the_pipeline_benchmark_builds_a_bundle_and_times_every_stage(tmp_path):
    reports = main(["--size", "tiny", "--device", "cpu", "--shots", "2", "--steps", "2", "--folder", str(tmp_path),
                    "--no-write"])
    for mode in ("plain", "offload"):
        stages = {s["stage"]: s for s in reports[mode]["stages"]}
        assert list(stages) == ["encode", "keyframes", "render", "export", "video", "mux"]
        assert all(len(stages[s]["produced"]) == 2 for s in ("encode", "keyframes", "render", "video"))
        assert all(s["seconds"] >= 0 and s.get("peak_gpu_bytes") is None for s in stages.values())  # a CPU run
    assert (tmp_path / "plain" / "movie.mp4").stat().st_size > 0 and (tmp_path / "offload" / "movie.mp4").exists()
    assert (tmp_path / "bundle" / "ar" / "backbone").is_dir()  # the backbone saved inside the AR folder
