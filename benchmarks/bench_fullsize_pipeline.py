"""The whole pipeline at full size on a GPU: each stage's time and peak GPU memory, with and without ``--offload``.

Builds a bundle of random-weight full-size components in mdream's own formats (the ``full`` template's shapes:
LongCLIP-L's text tower, a CLIP ViT-H/14 keyframe encoder, an SDXL-base renderer, a LLaMA-2-7B keyframe AR model, an
SVD-XT video model: ``bench_stage_memory.components``, from the published configs), each drawn on the device, cast to the template's dtype (float16; the LLaMA backbone bfloat16), saved with ``save_pretrained`` and
freed; the face embedder is the shipped toy recogniser (an ONNX file, run by onnxruntime). Then a script of
``--shots`` shots (the short example's first ones, at 1024x576, one 25-frame clip each; tiny: 64x64, 4 frames) runs through
``mdream generate --device cuda --json`` in a fresh process, once as it is and once with ``--offload``; the run
reports give each stage's seconds and peak GPU memory. Random weights draw noise: this measures time and memory,
not pictures. ``--size tiny`` runs the same code with the tests' tiny configs on the CPU (no GPU memory).

    python -m benchmarks.bench_fullsize_pipeline [--size full|tiny] [--device cuda] [--shots 3] [--steps 25]
        [--folder DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks.bench_stage_memory import LONGCLIP_L_TEXT, TINY_TEXT, components

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "scripts" / "short.yaml"
FACE_EMBEDDER = ROOT / "mdream" / "assets" / "eval" / "toy_face_recognition.onnx"
TITLE = "The pipeline at full size: time and peak GPU memory per stage"


def clip_frames(size: str) -> int:
    """Frames per shot: one SVD-XT clip at full size, a short one for the tiny run."""
    return 25 if size == "full" else 4


def frame_size(size: str) -> tuple[int, int]:
    return (1024, 576) if size == "full" else (64, 64)


def build_bundle(folder: Path, size: str, device: str, steps: int) -> Path:
    """Every component of a random-weight bundle of ``size`` saved under ``folder``; returns its bundle.yaml."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from mdream.models.toy_clip import build_word_tokenizer
    from mdream.models.video import VideoModelConfig

    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    full = size == "full"
    script = yaml.safe_load(EXAMPLE.read_text())
    words = [s["identifier"] + " " + s["descriptor"] for arc in script["arcs"] for s in arc["shots"]]
    words += [c["description"] for c in script["characters"]]
    text = LONGCLIP_L_TEXT if full else TINY_TEXT
    tokenizer = build_word_tokenizer(words, max_length=text["max_position_embeddings"])
    video_config = VideoModelConfig(num_frames=clip_frames(size), num_inference_steps=steps)
    if not full:
        video_config.width = video_config.height = 64
    folders = {"text_encoder": "text", "keyframe_encoder": "encoder", "keyframe_ar": "ar",
               "keyframe_decoder": "decoder", "video": "video"}
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device(device):  # drawn where they live: fast on a GPU
        for name, model in components(size, tokenizer, video_config):
            # the template's dtypes: float16, the LLaMA backbone bfloat16 (float32 for the tiny CPU run)
            model.to(torch.float32 if not full else torch.bfloat16 if name == "keyframe_ar" else torch.float16)
            target = folder / folders[name]
            if name == "text_encoder":  # a CLIP text folder: the tower and its tokenizer
                model.text_model.save_pretrained(target)
                model.tokenizer.save_pretrained(target)
            else:
                model.save_pretrained(target)
            del model  # saved: freed before the next one is built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    spec = {"face_embedder": {"path": str(FACE_EMBEDDER)}, **{name: {"path": f} for name, f in folders.items()}}
    spec["keyframe_decoder"].update(steps=steps, guidance=5.0)
    spec["video"]["steps"] = steps
    bundle = {"name": f"random-{size}", "components": spec}
    (folder / "bundle.yaml").write_text(yaml.safe_dump(bundle, sort_keys=False))
    return folder / "bundle.yaml"


def write_script(folder: Path, bundle: Path, shots: int, size: str) -> Path:
    """The short example's first ``shots`` shots, each one clip at 8 fps, drawn with ``bundle``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    kept = []
    for arc in data["arcs"]:
        arc["shots"] = arc["shots"][: max(0, shots - len(kept))]
        kept += arc["shots"]
    data["arcs"] = [arc for arc in data["arcs"] if arc["shots"]]
    for shot in kept:
        shot["duration"] = (clip_frames(size) - 1) / 8
    width, height = frame_size(size)
    data["output"].update({"width": width, "height": height, "fps": 8, "clip_length": clip_frames(size),
                           "model_bundle": str(bundle.parent)})
    shutil.copytree(EXAMPLE.parent / "faces", folder / "faces", dirs_exist_ok=True)
    path = folder / "script.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(script: Path, out: Path, device: str, offload: bool) -> dict:
    """``mdream generate`` in a fresh process; its run report."""
    command = [sys.executable, "-m", "mdream", "generate", str(script), "-o", str(out / "movie.mp4"),
               "--cache-dir", str(out / "cache"), "--device", device, "--json"] + (["--offload"] if offload else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "MDREAM_DEBUG": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"mdream generate failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25, help="the renderer's and the video model's sampling steps")
    parser.add_argument("--folder", type=Path, default=None, help="where the bundle and runs go (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="mdream-fullsize-"))
    bundle = build_bundle(folder / "bundle", args.size, args.device, args.steps)
    script = write_script(folder / "script", bundle, args.shots, args.size)
    reports = {mode: run(script, folder / mode, args.device, mode == "offload") for mode in ("plain", "offload")}
    stages = [s["stage"] for s in reports["plain"]["stages"]]
    rows = []
    for stage in stages:
        cells = []
        for mode in ("plain", "offload"):
            entry = next(s for s in reports[mode]["stages"] if s["stage"] == stage)
            peak = entry.get("peak_gpu_bytes")
            cells += [f"{entry['seconds']:.1f}", "-" if peak is None else f"{peak / 2**30:.2f}"]
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    weights = sum(f.stat().st_size for f in (folder / "bundle").rglob("*.safetensors")) / 2**30
    width, height = frame_size(args.size)
    body = (f"{args.size} random-weight bundle ({weights:.1f} GiB of safetensors), {args.shots} shots of the short "
            f"example at {width}x{height}, one {clip_frames(args.size)}-frame clip each, {args.steps} sampling steps "
            f"(renderer and video model), `mdream generate --device {args.device}` from an empty cache, each run in a "
            "fresh process:\n\n"
            "| stage | s | peak GPU GiB | s, `--offload` | peak GPU GiB, `--offload` |\n|---|---:|---:|---:|---:|\n"
            + "\n".join(rows) + "\n")
    print(body)
    if not args.no_write and args.size == "full" and args.device.startswith("cuda"):
        from benchmarks.results import update_section

        update_section(TITLE, body, f"python -m benchmarks.bench_fullsize_pipeline --shots {args.shots} "
                                    f"--steps {args.steps}")
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)
    return reports


if __name__ == "__main__":
    main()
