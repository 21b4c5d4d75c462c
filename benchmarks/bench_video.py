"""Anchor comparison for the video model: drift over repeated extensions, and time per second of video.

For ``--shots`` random toy shots, the keyframe (frame 0 of ``render_clip``) is extended ``--extensions`` times
(clip i+1 starts from clip i's last frame) with ``anchor="first"`` and with ``anchor="last"``. Per extension:

* colour drift: the distance between the colour statistics (per-channel mean and std, and a 8-bin per-channel
  histogram's L1) of that clip's last frame and of the keyframe;
* evaluator readings (``mdream.eval``'s toy frame analyser): whether that last frame still reads as the
  keyframe's scene, and the share of the keyframe's cast slots still read the same.

And the sampling time per second of video (at ``--fps``). Run after training::

    OMP_NUM_THREADS=2 python benchmarks/bench_video.py --model mdream/assets/models/toy-video --out video_bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def colour_stats(frame: np.ndarray) -> np.ndarray:
    """Per-channel mean, std and 8-bin histogram of a uint8 frame [H, W, 3], scaled to [0, 1]."""
    x = frame.reshape(-1, 3).astype(np.float32) / 255
    hist = [np.histogram(x[:, c], bins=8, range=(0, 1))[0] / len(x) for c in range(3)]
    return np.concatenate([x.mean(0), x.std(0), *hist])


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = colour_stats(a), colour_stats(b)
    return float(np.abs(sa[:6] - sb[:6]).sum() + 0.5 * np.abs(sa[6:] - sb[6:]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="A video model folder (video.json, unet/, ...).")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--extensions", type=int, default=10)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps per clip (default: the model's).")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON report here.")
    args = parser.parse_args()

    from mdream.eval.toy_samples import random_shot
    from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline
    from mdream.toyworld import make_world, render_clip
    from mdream.training.video import shot_action

    model = ImageToVideoModel.from_pretrained(args.model).to(args.device)
    pipe, c = ImageToVideoPipeline(model), model.config
    try:
        from mdream.eval.evaluate import TOY_ANALYSER
        from mdream.eval.frame_analyser import FrameAnalyser

        analyser = FrameAnalyser.from_pretrained(TOY_ANALYSER)
    except Exception as exc:  # the evaluator is optional here
        print(f"no frame analyser ({exc}); colour drift only")
        analyser = None
    world = make_world(args.world_seed)
    L = c.num_frames
    n_frames = L + args.extensions * (L - 1)
    report: dict[str, dict] = {}
    for anchor in ("first", "last"):
        drift = np.zeros((args.shots, args.extensions + 1))
        scene_kept = np.zeros_like(drift)
        cast_kept = np.zeros_like(drift)
        seconds = 0.0
        for s in range(args.shots):
            shot = random_shot(world, np.random.default_rng([args.seed, s]))
            keyframe = render_clip(world, shot, c.width, 2, np.random.default_rng([args.seed, s, 1]))[0]
            actions = shot_action(c, shot)[None]
            start = time.perf_counter()
            frames = pipe(keyframe[None], n_frames, actions=actions, anchor=anchor, fps=args.fps,
                          num_inference_steps=args.steps, generator=torch.Generator().manual_seed(s)).frames[0]
            seconds += time.perf_counter() - start
            ends = [frames[L - 1 + i * (L - 1)] for i in range(args.extensions + 1)]  # each clip's last frame
            drift[s] = [colour_distance(e, keyframe) for e in ends]
            if analyser is not None:
                from mdream.eval.evaluate import _to_analyser_size

                read = analyser.analyse(np.stack([_to_analyser_size(f) for f in [keyframe, *ends]]))
                scene_kept[s] = read["scene"][1:] == read["scene"][0]
                cast_kept[s] = (read["chars"][1:] == read["chars"][0]).mean(-1)
        report[anchor] = {
            "colour_drift_per_extension": drift.mean(0).round(4).tolist(),
            "scene_kept_per_extension": scene_kept.mean(0).round(3).tolist() if analyser else None,
            "cast_kept_per_extension": cast_kept.mean(0).round(3).tolist() if analyser else None,
            "seconds_per_video_second": round(seconds / (args.shots * n_frames / args.fps), 3),
        }
    text = json.dumps({"model": str(args.model), "shots": args.shots, "extensions": args.extensions,
                       "frames_per_shot": n_frames, "anchors": report}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
