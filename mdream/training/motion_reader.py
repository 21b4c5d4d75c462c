"""Training of the evaluator's toy motion reader through the shared loop (reproduces the shipped weights).

    OMP_NUM_THREADS=1 mdream train motion-reader --config motion-reader-toy --out runs/eval_motion --install

Data: a pool of ground-truth clips of random toy shots (``toyworld.render_clip`` at 32x32, rendered with a random
number of frames and resampled to the reader's ``num_frames`` by index, as a movie's shots are), cached in the run
folder, a few replaced by fresh renders every step. A share of every batch is *held* clips (frame 0 repeated):
labelled "stand" at every occupied slot and camera ``still``, so that the reader reads motion, not poses. Most
batches are spoiled the way generated clips are (one shift/scale, blur and colour change for the whole clip, plus
per-frame noise that must not read as motion). The finished reader is measured on fresh held-out clips and on
their held versions; those numbers go into its ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdream.eval.motion_reader import NOBODY, STILL, MotionReader, MotionReaderConfig
from mdream.training.analyser import install_reader
from mdream.training.common import console, parse_int_tuple, rendered_pool
from mdream.training.config import ConfigValueError
from mdream.training.loop import LoopConfig, fit, start_run

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval"
LABELS = ("actions", "camera")
"""The reader's targets: actions [n, 3] (ACTIONS index, -1 nobody there), camera [n] (CAMERAS index)."""


@dataclass
class MotionReaderTrainingConfig(LoopConfig):
    """Settings of a motion-reader run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "Motion reader"

    # LoopConfig's fields, with this run's defaults (their docstrings are LoopConfig's)
    steps: int = 2300
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 1e-4
    checkpoint_every: int = 250

    world_seed: int = 0
    """The world whose shots are rendered."""
    frame_size: int = 32
    """Clip frame size in pixels (the toy video model's)."""
    num_frames: int = 8
    """Frames the reader resamples every clip to."""
    clip_lengths: str = "8,12,16"
    """Frame counts the pool's clips are rendered with (comma-separated; each resampled to --num-frames)."""
    pool_size: int = 3000
    """Rendered ground-truth clips kept in memory, re-used with fresh augmentation."""
    refresh_per_step: int = 1
    """Pool clips replaced by fresh renders every step."""
    held_fraction: float = 0.2
    """Share of every batch made of held clips (frame 0 repeated): stand at every occupied slot, camera still."""
    clean_fraction: float = 0.3
    """Fraction of batches left without degradation."""
    val_clips: int = 400
    """Fresh held-out clips the finished reader is measured on (and their held versions)."""

    def check(self) -> None:
        super().check()
        lengths = parse_int_tuple(self.clip_lengths, "--clip-lengths")
        if not lengths or min(lengths) < 2:
            raise ConfigValueError("clip_lengths", f"--clip-lengths must be frame counts >= 2, got {self.clip_lengths!r}.")
        if self.num_frames < 2:
            raise ConfigValueError("num_frames", f"--num-frames must be >= 2, got {self.num_frames}.")
        if self.frame_size % 8:
            raise ConfigValueError("frame_size", f"--frame-size must be a multiple of 8, got {self.frame_size}.")
        if self.pool_size < self.batch_size or not 0 <= self.refresh_per_step <= self.pool_size:
            raise ConfigValueError("pool_size", f"--pool-size ({self.pool_size}) must hold a batch ({self.batch_size}) "
                                                f"and at least --refresh-per-step ({self.refresh_per_step}) clips.")
        for name in ("held_fraction", "clean_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be in [0, 1].")


def shot_motion_labels(shot) -> tuple[np.ndarray, int]:
    """A toy ShotSpec's targets: actions [3] (ACTIONS index per slot, -1 nobody there), camera (CAMERAS index)."""
    from mdream.toyworld.world import ACTIONS, CAMERAS, POSITIONS

    actions = np.full(3, NOBODY, np.int64)
    for m in shot.cast:
        actions[POSITIONS.index(m.position)] = ACTIONS.index(m.action)
    return actions, CAMERAS.index(shot.camera)


def render_motion_samples(world, n: int, rng: np.random.Generator, frame_size: int = 32, num_frames: int = 8,
                          lengths: tuple[int, ...] = (8,)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n ground-truth clips of random shots, each rendered with a random length from ``lengths`` and resampled to
    ``num_frames`` by index -> clips uint8 [n, num_frames, S, S, 3], labels (LABELS)."""
    from mdream.eval.toy_samples import random_shot
    from mdream.toyworld import render_clip

    clips = np.empty((n, num_frames, frame_size, frame_size, 3), np.uint8)
    labels = {"actions": np.empty((n, 3), np.int64), "camera": np.empty(n, np.int64)}
    for i in range(n):
        shot = random_shot(world, rng)
        length = int(rng.choice(lengths))
        clip = render_clip(world, shot, frame_size, length, rng)
        clips[i] = clip[MotionReader.frame_indices(length, num_frames)]
        labels["actions"][i], labels["camera"][i] = shot_motion_labels(shot)
    return clips, labels


def held_labels(labels: dict[str, np.ndarray], still: int) -> dict[str, np.ndarray]:
    """What a held clip (frame 0 repeated) of a shot reads: stand (class 0) where somebody is, camera ``still``."""
    actions = np.where(labels["actions"] >= 0, 0, NOBODY)
    return {"actions": actions, "camera": np.full(len(actions), still, np.int64)}


def degrade_clips(x: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Imperfect-generation augmentation on clips [B, T, 3, H, W] in [-1, 1].

    One shift/scale, blur and colour change per clip (the same for every frame: they must not read as motion), then
    per-frame pixel noise (flicker that must not read as motion either).
    """
    b, t, c, h, w = x.shape
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    scale = 1 + (torch.rand(b, generator=gen) - 0.5) * 0.16 * strength
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.1 * strength
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    theta = theta.repeat_interleave(t, 0)  # one transform per clip
    frames = x.reshape(b * t, c, h, w)
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    frames = F.grid_sample(frames, grid, padding_mode="border", align_corners=False)
    factor = float(rng.uniform(1.0, 1.0 + 1.0 * strength))
    if factor > 1.15:
        small = (max(4, int(h / factor)), max(4, int(w / factor)))
        frames = F.interpolate(F.interpolate(frames, size=small, mode="bilinear", antialias=True), size=(h, w),
                               mode="bilinear")
    x = frames.view(b, t, c, h, w)
    bright = (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.2 * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.3 * strength
    gain = 1 + (torch.rand(b, 1, 3, 1, 1, generator=gen) - 0.5) * 0.1 * strength
    x = (x * contrast + bright) * gain
    sigma = torch.rand(b, 1, 1, 1, 1, generator=gen) * 0.06 * strength
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def _to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, S, S, 3] -> float [B, T, 3, S, S] in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


class MotionReaderTask:
    """One step: clips of the pool (a few replaced by fresh renders), some held, most spoiled; 3x slot + camera loss."""

    unit = "clips"

    def __init__(self, model: MotionReader, world, pool: tuple[np.ndarray, dict[str, np.ndarray]],
                 config: MotionReaderTrainingConfig, device: torch.device):
        self.model, self.world, self.config, self.device = model, world, config, device
        self.clips, self.labels = pool
        self.lengths = parse_int_tuple(config.clip_lengths, "--clip-lengths")
        self.still = model.config.cameras.index(STILL)

    def sample(self, rng: np.random.Generator, size: int):
        c = self.config
        if c.refresh_per_step:
            idx = rng.choice(len(self.clips), c.refresh_per_step, replace=False)
            self.clips[idx], fresh = render_motion_samples(self.world, len(idx), rng, c.frame_size, c.num_frames,
                                                           self.lengths)
            for name in LABELS:
                self.labels[name][idx] = fresh[name]
        idx = rng.choice(len(self.clips), size, replace=False)
        clips = self.clips[idx].copy()
        labels = {name: self.labels[name][idx].copy() for name in LABELS}
        held = rng.random(size) < c.held_fraction
        if held.any():
            clips[held] = clips[held, :1]
            for name, values in held_labels({k: v[held] for k, v in labels.items()}, self.still).items():
                labels[name][held] = values
        x = _to_tensor(clips)
        if rng.random() >= c.clean_fraction:
            x = degrade_clips(x, rng, strength=float(rng.uniform(0.3, 1.0)))
        actions = torch.as_tensor(labels["actions"])
        actions = torch.where(actions < 0, self.model.nobody_class, actions)
        return x.to(self.device), {"actions": actions.to(self.device),
                                   "camera": torch.as_tensor(labels["camera"]).to(self.device)}

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        x, labels = batch
        action_logits, camera_logits, _ = model(x)
        actions = F.cross_entropy(action_logits.reshape(-1, action_logits.shape[-1]), labels["actions"].reshape(-1))
        camera = F.cross_entropy(camera_logits, labels["camera"])
        return {"loss": 3 * actions + camera, "actions": actions.detach(), "camera": camera.detach()}


def _motion_pool(world, config: MotionReaderTrainingConfig, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pool of rendered clips and their labels, cached in the run folder (a damaged cache is rendered again)."""
    rng = np.random.default_rng([config.seed, 0])
    lengths = parse_int_tuple(config.clip_lengths, "--clip-lengths")
    return rendered_pool(
        path, config.pool_size, "clips", LABELS,
        lambda n: render_motion_samples(world, n, rng, config.frame_size, config.num_frames, lengths),
        chunk=250, fits=lambda clips: clips.shape[:2] == (config.pool_size, config.num_frames))


def measure_motion_reader(model: MotionReader, clips: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, object]:
    """Held-out facts: per-slot accuracy (occupied slots, all slots), per-action accuracy, camera accuracy; and what
    the held versions of the same clips read (share of occupied slots read as each action, share of still cameras)."""
    actions = model.config.actions
    pred = model.read(clips)
    occupied = labels["actions"] >= 0
    facts: dict[str, object] = {
        "val_clips": len(clips),
        "val_action_accuracy": float((pred["actions"][occupied] == labels["actions"][occupied]).mean()),
        "val_slot_accuracy": float((pred["actions"] == labels["actions"]).mean()),
        "val_camera_accuracy": float((pred["camera"] == labels["camera"]).mean()),
        "val_action_accuracy_by_action": {
            name: float((pred["actions"][labels["actions"] == i] == i).mean())
            for i, name in enumerate(actions) if (labels["actions"] == i).any()
        },
    }
    held = model.read(clips[:, :1].repeat(clips.shape[1], axis=1))
    read = held["actions"][occupied]
    facts["held_read_as"] = {name: float((read == i).mean()) for i, name in enumerate(actions)}
    facts["held_read_as"]["nobody"] = float((read == NOBODY).mean())
    facts["held_camera_still"] = float((held["camera"] == model.config.cameras.index(STILL)).mean())
    facts["held_empty_slots_right"] = float((held["actions"][~occupied] == NOBODY).mean())
    return facts


def train_motion_reader(config: MotionReaderTrainingConfig, out: str | Path, resume: str = "auto", given=None) -> Path:
    """Train (or resume) the motion reader on toy ground-truth clips; save ``out/motion_reader/``."""
    from mdream.toyworld import make_world
    from mdream.toyworld.world import ACTIONS, CAMERAS

    config, out, start_from, accelerator = start_run(config, MotionReaderTrainingConfig, out, resume, given)
    world = make_world(config.world_seed)
    model = MotionReader(MotionReaderConfig(num_frames=config.num_frames, frame_size=config.frame_size,
                                            actions=list(ACTIONS), cameras=[*CAMERAS, STILL],
                                            world_seed=config.world_seed))
    with accelerator.main_process_first():
        pool = _motion_pool(world, config, out / "pool.npz")
    task = MotionReaderTask(model, world, pool, config, accelerator.device)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="motion reader")
    folder = out / "motion_reader"
    if accelerator.is_main_process:
        model = result.model.cpu().eval()
        val_clips, val = render_motion_samples(world, config.val_clips, np.random.default_rng([config.seed, 999]),
                                               config.frame_size, config.num_frames,
                                               parse_int_tuple(config.clip_lengths, "--clip-lengths"))
        elapsed = json.loads((result.checkpoint / "state.json").read_text()).get("elapsed_s", 0.0)
        facts = {"steps": result.step, "train_seconds": round(elapsed, 1), **measure_motion_reader(model, val_clips, val)}
        model.save_pretrained(folder, **facts)
        console.print(f"motion reader: {facts} -> {folder}")
    accelerator.wait_for_everyone()
    return folder


def install_motion_reader(folder: Path, eval_dir: Path = ASSETS_DIR, fp16: bool = True) -> Path:
    """Copy a trained reader into ``eval_dir/motion_reader`` (see :func:`mdream.training.analyser.install_reader`;
    stored as float16 by default)."""
    return install_reader(folder, "motion_reader", eval_dir, fp16)
