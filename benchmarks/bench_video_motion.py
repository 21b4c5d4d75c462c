"""The video model's motion on single clips: does a keyframe become the scripted motion, and does the cast survive it?

    python -m benchmarks.bench_video_motion                          # the shipped toy video model
    python -m benchmarks.bench_video_motion --model DIR --steps 4 8 20 --json out.json

For ``--shots`` held-out random toy shots with at least one cast member (their own seed stream:
``default_rng([seed, world_seed, 0xB0E, shot])``; the trainer draws from ``default_rng([data_seed, world_seed,
0x71D])``), the true clip (``render_clip``, the model's frame size and clip length) and one clip drawn by the model
from its keyframe (frame 0) and the shot's action, anchored on the keyframe, are scored:

* frame error: the mean absolute difference of the clip's last frame from the true clip's, in grey levels (0-255);
  copying the keyframe scores how far the true clip moves;
* moving actions read: the evaluator's motion reader on the clip, the share of cast members with a moving action
  (walk, wave, jump, sit) whose slot it reads as that action (a member's slot is its script position), in all and
  per action;
* walkers' travel: how far each walker's third of the frame has moved the way the toy world's walkers go
  (:func:`walk_travel`: the horizontal shift, in pixels, that best carries the keyframe's columns there onto the last
  frame's, times the walker's direction); the true clips travel about 3 pixels, a figure walking in place 0;
* cast kept: the evaluator's frame analyser on the last frame, the share of the 3 position slots it reads as it
  reads them on the keyframe (who stands where, empty included).

``--denoise-sigmas`` also asks where along the noise levels the walk is decided: for each sigma, one call of the
model's denoiser on each walker's true clip plus noise of that sigma (the same conditioning as the clip), and the
walkers' travel of its estimate (near the truth at small sigmas, where the noisy clip shows the walker's new place;
at large ones, what the model predicts by itself).

Rows: the ground truth (the true clip), the keyframe copied into every frame (no motion: the floor of the motion
reading, the ceiling of the cast reading), then the model at each ``--steps`` (default: the model's own), and at
each of those at each ``--action-guidance`` scale where given (default: the model's own scale). Writes its
section of benchmarks/RESULTS.md when it measured the shipped model (``--model`` left out); without a video model
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_video
from benchmarks.bench_video import SHIPPED
from mdream.eval.evaluate import POSITIONS

TITLE = "Video model: motion on single clips (toy)"
MOTION_TAG = 0xB0E
MOVING = ("walk", "wave", "jump", "sit")


def held_out_shot(world, seed: int, index: int, size: int, n_frames: int):
    """Shot ``index`` of this benchmark's stream (at least one cast member) and its true clip uint8 [T, S, S, 3]."""
    return bench_video.held_out_shot(world, seed, index, size, n_frames, tag=MOTION_TAG, min_cast=1)


def walk_travel(clip: np.ndarray, position: str, max_shift: int = 6) -> int:
    """How far the third of ``clip`` [T, S, S, 3] at ``position`` moved, in pixels, the way a walker there goes: the
    shift s in [-max_shift, max_shift] for which the keyframe's columns moved by s (edges repeated) best match (mean absolute
    difference) the last frame's in that third (the smallest of equals), times the walker's direction (+1
    rightwards)."""
    from mdream.models.video import slot_of_column
    from mdream.toyworld.render import walk_direction

    columns = torch.nonzero(slot_of_column(len(POSITIONS), clip.shape[2]) == POSITIONS.index(position))
    a, b = int(columns.min()), int(columns.max()) + 1  # the columns the action map paints the slot over
    m = max_shift
    first = np.pad(clip[0].astype(np.float32), ((0, 0), (m, m), (0, 0)), mode="edge")  # edges repeated, no wrap
    last = clip[-1, :, a:b].astype(np.float32)
    shifts = sorted(range(-m, m + 1), key=abs)  # ties go to the smallest shift
    errors = [np.abs(first[:, m - s + a: m - s + b] - last).mean() for s in shifts]  # column c shows c - s
    return int(shifts[int(np.argmin(errors))] * walk_direction(position))


@torch.no_grad()
def denoised_travel(model, shots, sigmas: list[float], fps: int, seed: int = 0) -> dict[float, float]:
    """Walkers' travel of the model's one-step estimate of each walker's true clip from that clip plus noise of each
    sigma: {sigma: mean travel in pixels} over the walkers of ``shots`` [(shot, clip uint8 [T, S, S, 3])]."""
    from mdream.models.video import ImageToVideoPipeline
    from mdream.training.video import shot_action

    g = torch.Generator().manual_seed(seed)
    travel: dict[float, list[int]] = {sigma: [] for sigma in sigmas}
    for shot, clip in shots:
        walkers = [m.position for m in shot.cast if m.action == "walk"]
        if not walkers:
            continue
        frames = ImageToVideoPipeline.prepare_image(clip).to(model.device)  # [T, 3, S, S] in [-1, 1]
        t = frames.shape[0]
        base = model.residual_base(frames[:1], t)  # [1, T, C, h, w] or None
        x0 = model.clip_latents(frames)[None]  # [1, T, C, h, w]
        x0 = x0 if base is None else x0 - base
        actions = shot_action(model.config, shot)[None].to(model.device)
        cond = model.conditioning(model.to_latents(frames[:1]), actions, t)
        context = model.encode_image(frames[:1])
        tokens = model.encode_actions(actions, 1)
        context = context if tokens is None else torch.cat([context, tokens], dim=1)
        ids = model.added_time_ids(1, fps, shot_frames=t)
        for sigma in sigmas:
            noise = torch.randn(x0.shape, generator=g).to(model.device)
            est = model.denoise(x0 + sigma * noise, torch.tensor([sigma], device=model.device), cond, context, ids)
            out = model.decode(est if base is None else est + base)[0]  # [T, 3, S, S]
            drawn = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            travel[sigma] += [walk_travel(drawn, position) for position in walkers]
    return {sigma: round(float(np.mean(v)), 2) if v else float("nan") for sigma, v in travel.items()}


def score(shots, clips: list[np.ndarray], analyser, reader) -> dict[str, float | int]:
    """The row of ``clips`` (one per shot, frame 0 the keyframe) against the true clips of ``shots``."""
    truth = [clip for _, clip in shots]
    error = np.mean([np.abs(c[-1].astype(np.float32) - t[-1].astype(np.float32)).mean()
                     for c, t in zip(clips, truth, strict=True)])
    read = reader.read(np.stack(clips))["actions"]  # [N, 3]: index into the reader's actions, -1 nobody
    actions = reader.config.actions
    members = [(m.action, read[i, POSITIONS.index(m.position)] == actions.index(m.action))
               for i, (shot, _) in enumerate(shots) for m in shot.cast if m.action in MOVING]
    hits = [hit for _, hit in members]
    by_action = {a: round(float(np.mean([hit for b, hit in members if b == a])), 3)
                 for a in MOVING if any(b == a for b, _ in members)}
    travel = [walk_travel(clip, m.position) for (shot, _), clip in zip(shots, clips, strict=True)
              for m in shot.cast if m.action == "walk"]
    kept = []
    for clip in clips:
        chars = analyser.analyse(np.stack([clip[0], clip[-1]]))["chars"]  # [2, 3]
        kept.append(float((chars[1] == chars[0]).mean()))
    return {"frame_error": round(float(error), 2), "moving_read": round(float(np.mean(hits)), 3),
            "moving_members": len(hits), "cast_kept": round(float(np.mean(kept)), 3), "by_action": by_action,
            "walk_travel": round(float(np.mean(travel)), 2) if travel else None}


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| clip | last-frame error (grey levels) | moving actions read (members) | "
             + " | ".join(MOVING) + " | walkers' travel (px) | cast kept |",
             "|---|---:|---:|" + "---:|" * len(MOVING) + "---:|---:|"]
    for name, r in rows.items():
        per_action = " | ".join(f"{r['by_action'][a]:.2f}" if a in r["by_action"] else "" for a in MOVING)
        lines.append(f"| {name} | {r['frame_error']:.1f} | {r['moving_read']:.3f} ({r['moving_members']}) "
                     f"| {per_action} | {'' if r.get('walk_travel') is None else format(r['walk_travel'], '.2f')} "
                 f"| {r['cast_kept']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="A video model folder [default: the shipped toy video model; only its numbers go into "
                             "RESULTS.md].")
    parser.add_argument("--shots", type=int, default=64, help="Held-out shots (one clip each).")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="Euler steps per clip, one row each (default: the model's own).")
    parser.add_argument("--action-guidance", type=float, nargs="+", default=None,
                        help="Action guidance scales to measure at each --steps (default: the model's own; 1: none).")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=900_001, help="Seed of the held-out shot stream.")
    parser.add_argument("--denoise-sigmas", type=float, nargs="+", default=None,
                        help="Also the walkers' travel of the model's one-step estimate of the true clip from it plus "
                             "noise of each of these sigmas (where along the noise levels the walk is decided).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args(argv)

    folder = args.model or SHIPPED
    if not (folder / "video.json").is_file() and not (folder / "model_index.json").is_file():
        print(f"no video model at {folder}: skipping the motion benchmark")
        return

    from mdream.eval.evaluate import TOY_ANALYSER, TOY_MOTION_READER
    from mdream.eval.frame_analyser import FrameAnalyser
    from mdream.eval.motion_reader import MotionReader
    from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline
    from mdream.toyworld import make_world
    from mdream.training.video import shot_action

    t0 = time.perf_counter()
    model = ImageToVideoModel.from_pretrained(folder).to(args.device)
    pipe, c = ImageToVideoPipeline(model), model.config
    if c.width != c.height:
        raise SystemExit(f"the toy benchmark renders square shots; the model draws {c.width}x{c.height}")
    analyser, reader = FrameAnalyser.from_pretrained(TOY_ANALYSER), MotionReader.from_pretrained(TOY_MOTION_READER)
    world = make_world(args.world_seed)
    L = c.num_frames
    shots = [held_out_shot(world, args.seed, s, c.width, L) for s in range(args.shots)]
    rows = {"ground truth": score(shots, [clip for _, clip in shots], analyser, reader),
            "the keyframe copied": score(shots, [np.repeat(clip[:1], L, 0) for _, clip in shots], analyser, reader)}
    seconds = {}
    scales = args.action_guidance or [c.action_guidance_scale]
    for steps in args.steps or [c.num_inference_steps]:
        for scale in scales:
            clips, start = [], time.perf_counter()
            for s, (shot, clip) in enumerate(shots):
                clips.append(pipe(clip[:1], L, actions=shot_action(c, shot)[None], anchor="first", fps=args.fps,
                                  num_inference_steps=steps, action_guidance_scale=scale,
                                  generator=torch.Generator().manual_seed(s)).frames[0])
            name = f"model, {steps} Euler steps" + (f", action guidance {scale:g}" if args.action_guidance else "")
            seconds[name] = round(time.perf_counter() - start, 1)
            rows[name] = score(shots, clips, analyser, reader)
    report = {"model": str(folder), "shots": args.shots, "clip_length": L, "size": c.width, "seed": args.seed,
              "torch_threads": torch.get_num_threads(), "rows": rows, "sampling_seconds": seconds}
    extra = ""
    if args.denoise_sigmas:
        travel = report["denoised_travel"] = denoised_travel(model, shots, args.denoise_sigmas, args.fps)
        extra = ("\n\nWalkers' travel of the model's one-step estimate of the true clip from it plus noise of each "
                 f"sigma (true clips: {rows['ground truth']['walk_travel'] or 0.0:.2f} px):\n\n"
                 + "| sigma | " + " | ".join(f"{sigma:g}" for sigma in travel) + " |\n"
                 + "|---|" + "---:|" * len(travel) + "\n"
                 + "| walkers' travel (px) | " + " | ".join(f"{v:.2f}" for v in travel.values()) + " |")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    body = (f"{args.shots} held-out random toy shots with a cast ({c.width}x{c.width}, world {args.world_seed}, shot "
            f"stream seed {args.seed}), one {L}-frame clip each from its keyframe and action; last-frame error "
            "against the true clip, the evaluator's motion reader on the cast members with a moving action "
            "(walk, wave, jump, sit), the frame analyser's slots on the last frame against the keyframe's. "
            f"{report['seconds']:.0f} s in all ({report['torch_threads']} torch threads, {args.device}).\n\n"
            + markdown(rows) + extra)
    print(body)
    if args.model is None:
        from benchmarks.results import update_section

        command = (f"python -m benchmarks.bench_video_motion --shots {args.shots}"
                   + (f" --steps {' '.join(map(str, args.steps))}" if args.steps else "")
                   + (f" --action-guidance {' '.join(f'{g:g}' for g in args.action_guidance)}"
                      if args.action_guidance else "")
                   + (f" --denoise-sigmas {' '.join(f'{g:g}' for g in args.denoise_sigmas)}"
                      if args.denoise_sigmas else ""))
        update_section(TITLE, body, command)


if __name__ == "__main__":
    main()
