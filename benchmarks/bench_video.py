"""The video model's anchor, ``first`` against ``last``: drift over repeated extensions, and time per second of video.

    python -m benchmarks.bench_video                                   # the shipped toy video model
    python -m benchmarks.bench_video --model DIR --shots 32 --json out.json

For ``--shots`` held-out random toy shots (drawn from a seed stream of their own: the trainer draws its shots from
``default_rng([data_seed, world_seed, 0x71D])``, this benchmark from ``default_rng([seed, world_seed, 0xB1D, shot])``),
the keyframe (frame 0 of ``render_clip``, at the model's frame size) is extended ``--extensions`` times (clip i+1
starts from clip i's last frame) with ``anchor="first"`` and with ``anchor="last"``, one shot at a time as the video
stage draws them. Each clip's last frame is compared with the keyframe:

* colour drift: the distance between their colour statistics (per-channel mean and std, plus half the L1 of 8-bin
  per-channel histograms);
* the evaluator's readings (``mdream.eval``'s toy frame analyser): the share of shots whose last frame still reads
  as the keyframe's scene, and of the 3 position slots still read the same (who stands where, empty included);
* identity (the evaluator's toy face embedder, faces cut where the toy world draws the keyframe's cast, as
  ``mdream eval`` cuts them): the cosine of each cast member's face in the last frame and in the keyframe, and the
  share of those faces whose nearest reference (the mean embedding of rendered face photos of each of the world's
  characters) is the right character; the boxes are the keyframe's, so motion alone (a walker, a zooming camera)
  lowers both, as the ground-truth rows show;
* continuity of the hidden state: the share of last frames whose scene palette, and of the cast's trousers (close-ups
  skipped), the analyser reads as in the keyframe.

Rows: the first clip's last frame, then the last frame after 1, 5 and 10 extensions, and the mean over extensions
1-10; the JSON holds every extension (index 0: the keyframe read against itself; identity accuracy there is the
embedder's ceiling at this frame size). As a reference, the ground truth's own change: the same readings on frames
L-1 and 2L-2 of the true render (the first clip and one extension of a shot moving as the training clips do).
Copying the keyframe is no row: it is 0 drift and 1 everywhere by construction. And the sampling time per second of video at ``--fps`` (with the torch threads stated).

Writes its section of benchmarks/RESULTS.md when it measured the shipped model (``--model`` left out); without a
shipped video model it says so and exits 0 (``make bench`` skips it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TITLE = "Video model: drift over extensions, anchor first vs last (toy)"
SHIPPED = Path(__file__).resolve().parent.parent / "mdream" / "assets" / "models" / "toy-video"
BENCH_TAG = 0xB1D  # the trainer's shots use 0x71D in this place of the seed
METRICS = (  # key, column title
    ("colour_drift", "colour drift"),
    ("scene_kept", "scene kept"),
    ("cast_kept", "cast slots kept"),
    ("identity_cosine", "identity cosine"),
    ("identity_accuracy", "identity accuracy"),
    ("palette_kept", "palette kept"),
    ("trousers_kept", "trousers kept"),
)
TABLE_EXTENSIONS = (0, 1, 5, 10)


def colour_stats(frame: np.ndarray) -> np.ndarray:
    """Per-channel mean, std and 8-bin histogram of a uint8 frame [H, W, 3], scaled to [0, 1]."""
    x = frame.reshape(-1, 3).astype(np.float32) / 255
    hist = [np.histogram(x[:, c], bins=8, range=(0, 1))[0] / len(x) for c in range(3)]
    return np.concatenate([x.mean(0), x.std(0), *hist])


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = colour_stats(a), colour_stats(b)
    return float(np.abs(sa[:6] - sb[:6]).sum() + 0.5 * np.abs(sa[6:] - sb[6:]).sum())


def held_out_shot(world, seed: int, index: int, size: int, n_frames: int, tag: int = BENCH_TAG, min_cast: int = 0):
    """Shot ``index`` of a benchmark's stream (``tag``: the benchmark's place in the seed; shots of at least
    ``min_cast`` cast members) and its true render uint8 [n_frames, size, size, 3] (frame 0: the keyframe)."""
    from mdream.eval.toy_samples import random_shot
    from mdream.toyworld import render_clip

    rng = np.random.default_rng([seed, world.seed, tag, index])
    shot = random_shot(world, rng, min_cast=min_cast)
    return shot, render_clip(world, shot, size, n_frames, rng)


class Reader:
    """The evaluator's toy readings of frames against their shot's keyframe."""

    def __init__(self, world, photos_per_character: int = 4):
        from mdream.eval.evaluate import TOY_ANALYSER, TOY_FACE_MODEL
        from mdream.eval.frame_analyser import FrameAnalyser
        from mdream.models.face_embedder import FaceIdentityEmbedder
        from mdream.toyworld import render_face_photo

        self.world = world
        self.analyser = FrameAnalyser.from_pretrained(TOY_ANALYSER)
        self.embedder = FaceIdentityEmbedder(TOY_FACE_MODEL)
        self.ids = [c.id for c in world.characters]
        rng = np.random.default_rng([world.seed, BENCH_TAG, 0xFACE])
        photos = np.stack([render_face_photo(world, cid, rng) for cid in self.ids for _ in range(photos_per_character)])
        refs = self.embedder.embed(photos).reshape(len(self.ids), photos_per_character, -1).mean(1)
        self.references = refs / np.linalg.norm(refs, axis=1, keepdims=True)  # [characters, D]

    def faces(self, shot, frames: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The cast's ids and their face embeddings in each frame [F, n, D] (boxes of the keyframe's layout)."""
        from mdream.eval.toy_samples import crop_resized, square_box
        from mdream.toyworld import face_boxes

        size = frames.shape[1]
        boxes = [(cid, square_box(box, size, size)) for cid, box in face_boxes(shot, size, self.world)]
        if not boxes:
            return [], np.zeros((len(frames), 0, self.references.shape[1]), np.float32)
        crops = np.stack([crop_resized(f, box) for f in frames for _, box in boxes])
        return [cid for cid, _ in boxes], self.embedder.embed(crops).reshape(len(frames), len(boxes), -1)

    def read(self, shot, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Readings of ``frames`` uint8 [F, S, S, 3] (frame 0: the keyframe) per metric, [F] each (NaN: n/a)."""
        from mdream.eval.evaluate import POSITIONS

        n = len(frames)
        nan = np.full(n, np.nan)
        out = {"colour_drift": np.array([colour_distance(f, frames[0]) for f in frames])}
        read = self.analyser.analyse(frames)
        out["scene_kept"] = (read["scene"] == read["scene"][0]).astype(float)
        out["cast_kept"] = (read["chars"] == read["chars"][0]).mean(-1)
        ids, emb = self.faces(shot, frames)
        if ids:
            out["identity_cosine"] = (emb * emb[:1]).sum(-1).mean(-1)
            truth = np.array([self.ids.index(cid) for cid in ids])
            out["identity_accuracy"] = ((emb @ self.references.T).argmax(-1) == truth).mean(-1)
        else:
            out["identity_cosine"] = out["identity_accuracy"] = nan
        if self.analyser.reads_hidden_state:
            out["palette_kept"] = (read["palette"] == read["palette"][0]).astype(float)
            slots = [POSITIONS.index(m.position) for m in shot.cast]
            if slots and shot.camera != "close-up":  # close-ups frame the faces: no legs, no trousers
                out["trousers_kept"] = (read["trousers"][:, slots] == read["trousers"][0, slots]).mean(-1)
            else:
                out["trousers_kept"] = nan
        else:
            out["palette_kept"] = out["trousers_kept"] = nan
        return out


def pooled(per_shot: list[dict[str, np.ndarray]]) -> dict[str, list[float | None]]:
    """Per metric, the mean over the shots where it applies at each extension (None: none applies)."""
    out = {}
    for key, _ in METRICS:
        values = np.stack([r[key] for r in per_shot])  # [shots, F]
        counts = (~np.isnan(values)).sum(0)
        means = np.where(counts > 0, np.nansum(values, 0) / np.maximum(counts, 1), np.nan)
        out[key] = [None if np.isnan(v) else round(float(v), 4) for v in means]
    return out


def markdown(name: str, readings: dict[str, list], extensions: list[int], mean_of: range | None) -> str:
    head = f"| {name} | " + " | ".join(title for _, title in METRICS) + " |"
    lines = [head, "|---|" + "---:|" * len(METRICS)]

    def cell(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for e in extensions:  # readings[k][0] is the keyframe; e extensions end at readings[k][e + 1]
        label = "first clip" if e == 0 else f"{e} extension{'s' if e > 1 else ''}"
        lines.append(f"| {label} | " + " | ".join(cell(readings[k][e + 1]) for k, _ in METRICS) + " |")
    if mean_of is not None:
        means = []
        for k, _ in METRICS:
            values = [readings[k][e + 1] for e in mean_of if readings[k][e + 1] is not None]
            means.append(float(np.mean(values)) if values else None)
        lines.append(f"| mean over 1-{mean_of[-1]} extensions | " + " | ".join(cell(v) for v in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="A video model folder (video.json, unet/, ...) [default: the shipped toy video model; "
                             "only its numbers go into RESULTS.md].")
    parser.add_argument("--shots", type=int, default=8, help="Held-out shots per anchor.")
    parser.add_argument("--extensions", type=int, default=10)
    parser.add_argument("--fps", type=int, default=8, help="The script fps (the added time id and the time basis).")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps per clip (default: the model's).")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=900_001, help="Seed of the held-out shot stream.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--colour-coherence", type=float, default=1.0,
                        help="The colour coherence of the third row set (anchor=first with the continuing clips' "
                             "conditioning frames pulled to the keyframe's colour statistics).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args(argv)

    folder = args.model or SHIPPED
    if not (folder / "video.json").is_file() and not (folder / "model_index.json").is_file():
        print(f"no video model at {folder}: skipping the video benchmark (train one with `mdream train video "
              "--config video-toy-action-map` and export it there with `mdream train export RUN/final "
              f"{SHIPPED.relative_to(SHIPPED.parents[3])} --fp16`)")
        return

    from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline
    from mdream.toyworld import make_world
    from mdream.training.video import shot_action

    t0 = time.perf_counter()
    model = ImageToVideoModel.from_pretrained(folder).to(args.device)
    pipe, c = ImageToVideoPipeline(model), model.config
    if c.width != c.height:
        sys.exit(f"the toy benchmark renders square shots; the model draws {c.width}x{c.height}")
    world = make_world(args.world_seed)
    reader = Reader(world)
    L = c.num_frames
    n_frames = L + args.extensions * (L - 1)
    shots = [held_out_shot(world, args.seed, s, c.width, 2 * L - 1) for s in range(args.shots)]
    truth = pooled([reader.read(shot, clip[[0, L - 1, 2 * L - 2]]) for shot, clip in shots])
    anchors: dict[str, dict] = {}
    coherence = args.colour_coherence
    for variant, (anchor, colour) in variants(coherence).items():
        per_shot, seconds = [], 0.0
        for s, (shot, clip) in enumerate(shots):
            actions = shot_action(c, shot)[None]
            start = time.perf_counter()
            frames = pipe(clip[:1], n_frames, actions=actions, anchor=anchor, fps=args.fps,
                          num_inference_steps=args.steps, colour_coherence=colour,
                          generator=torch.Generator().manual_seed(s)).frames[0]
            seconds += time.perf_counter() - start
            ends = frames[[L - 1 + e * (L - 1) for e in range(args.extensions + 1)]]  # each clip's last frame
            per_shot.append(reader.read(shot, np.concatenate([clip[:1], ends])))
        anchors[variant] = {"anchor": anchor, "colour_coherence": colour, "readings": pooled(per_shot),
                           "seconds_per_video_second": round(seconds / (args.shots * n_frames / args.fps), 3)}
    threads = torch.get_num_threads()
    report = {"model": str(folder), "shots": args.shots, "extensions": args.extensions, "clip_length": L,
              "frames_per_shot": n_frames, "fps": args.fps, "steps": args.steps or c.num_inference_steps,
              "torch_threads": threads, "seed": args.seed, "ground_truth": truth, "anchors": anchors,
              "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")

    ext = [e for e in TABLE_EXTENSIONS if e <= args.extensions]
    body = [
        f"{args.shots} held-out toy shots ({c.width}x{c.height}, world {args.world_seed}, shot stream seed "
        f"{args.seed}), each keyframe extended {args.extensions} times ({n_frames} frames, clips of {L}, "
        f"{report['steps']} Euler steps per clip); every clip's last frame against the keyframe: colour-statistics "
        "distance (lower: less drift) and the share of the evaluator's readings that still agree with the "
        "keyframe's (scene, the 3 position slots, the hidden palette and trousers; identity: the cosine of each cast "
        "member's face with its face in the keyframe, and the share of faces whose nearest world character is the "
        "right one, faces cut at the keyframe's face boxes, so a figure that walks or a camera that zooms lowers both "
        f"even in the ground truth; on the keyframe itself that share is "
        f"{_fmt(truth['identity_accuracy'][0])}). {report['seconds']:.0f} s in all.",
    ]
    for variant, a in anchors.items():
        body.append(f"**{variant}**: {a['seconds_per_video_second']:.2f} s of sampling per second of video "
                    f"at {args.fps} fps ({threads} torch threads, {args.device}).\n\n"
                    + markdown(variant, a["readings"], ext, range(1, args.extensions + 1)))
    body.append("Ground truth (the true render's own change as it moves; only 2 clips exist):\n\n"
                + markdown("ground truth", truth, [0, 1], None))
    body = "\n\n".join(body)
    print(body)
    if args.model is None:
        from benchmarks.results import update_section

        command = f"OMP_NUM_THREADS={threads} python -m benchmarks.bench_video --shots {args.shots} " \
                  f"--extensions {args.extensions}" + \
                  (f" --colour-coherence {coherence}" if coherence != 1.0 else "") + (f" --device {args.device}" if args.device != "cpu" else "")
        update_section(TITLE, body, command)


def variants(coherence: float) -> dict[str, tuple[str, float]]:
    """The row sets: label -> (anchor, colour coherence): the first frame through the cross-attention alone, the same
    with the continuing clips' conditioning frames pulled to its colours, and the previous clip's last frame."""
    return {"anchor=first (cross-attention only)": ("first", 0.0),
            f"anchor=first + colour coherence {coherence:g}": ("first", coherence),
            "anchor=last": ("last", 0.0)}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
