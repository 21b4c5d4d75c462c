"""Training of the evaluator's two toy models, through the shared loop (reproduce the shipped weights).

    mdream train analyser --config analyser-toy --out runs/eval_analyser --install   # -> frame_analyser/
    mdream train face-embedder --out runs/eval_face --install                        # -> toy_face_recognition.onnx

Both train on fresh toy-world renders (no dataset on disk) and checkpoint and resume like every
``mdream train`` run (``--resume auto|never|PATH``, settings saved as ``train_config.json``).
``--install`` copies the result into ``mdream/assets/eval/``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mdream.eval.face_embedder import (
    FACE_SIZE,
    ArcMarginHead,
    FaceEmbedderConfig,
    FaceEmbedderNet,
    export_onnx,
    normalise_faces,
)
from mdream.eval.face_embedder import (
    save_config as save_embedder_config,
)
from mdream.eval.frame_analyser import ANALYSER_SIZE, FrameAnalyser, FrameAnalyserConfig
from mdream.eval.toy_samples import crop_resized, random_shot, square_box
from mdream.training.common import (
    console,
    parse_int_tuple,
    rendered_pool,
)
from mdream.training.config import ConfigValueError
from mdream.training.loop import LoopConfig, fit, start_run

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval"


# ---------------------------------------------------------------------------------------------
# Toy-world samples
# ---------------------------------------------------------------------------------------------


def degrade(images: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Imperfect-generation augmentation on [B, 3, H, W] in [-1, 1]: shift/scale, blur, colour, noise.

    Generated frames are blurry, grainy and slightly off in colour and placement; the evaluator must
    read them anyway, so it trains on ground truth spoiled in those ways. Colours change only a little:
    in the toy world colour *is* identity.
    """
    b, _, h, w = images.shape
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    # Small random affine (scale 0.9-1.1, shift up to 6 % of the frame).
    scale = 1 + (torch.rand(b, generator=gen) - 0.5) * 0.2 * strength
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.12 * strength
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    # Blur by down- then up-sampling with a random factor (per batch: cheap, and still varied).
    factor = float(rng.uniform(1.0, 1.0 + 1.5 * strength))
    if factor > 1.15:
        small = (max(4, int(h / factor)), max(4, int(w / factor)))
        x = F.interpolate(F.interpolate(x, size=small, mode="bilinear", antialias=True), size=(h, w), mode="bilinear")
    # Brightness, contrast and per-channel gain.
    bright = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2 * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.3 * strength
    gain = 1 + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.1 * strength
    x = (x * contrast + bright) * gain
    # Pixel noise with a per-sample sigma in [0, 0.15].
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.15 * strength
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# Face embedder
# ---------------------------------------------------------------------------------------------


@dataclass
class FaceTrainingConfig(LoopConfig):
    """Settings of a face-embedder run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "Face embedder"

    # LoopConfig's fields, with this run's defaults (their docstrings are LoopConfig's)
    steps: int = 700
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 5e-4
    checkpoint_every: int = 200
    log_every: int = 20

    world_seeds: str = "0,1,2,3"
    """Worlds whose characters are the identity classes (world 0 is the evaluator's world), comma-separated."""
    arc_scale: float = 30.0
    """ArcFace logit scale s."""
    arc_margin: float = 0.4
    """ArcFace additive angular margin m (radians)."""
    keyframe_fraction: float = 0.5
    """Fraction of each batch cut from freshly rendered keyframes (32/64/128 px); the rest are photos."""
    photo_pool: int = 2048
    """Face photos kept in memory (rendering one costs as much as a training sample)."""
    photo_refresh: int = 8
    """Pool photos replaced by fresh renders every step (new light, pose, noise)."""

    def check(self) -> None:
        super().check()
        parse_int_tuple(self.world_seeds, "--world-seeds")
        if not 0 <= self.keyframe_fraction <= 1:
            raise ConfigValueError("keyframe_fraction", f"--keyframe-fraction must be in [0, 1], got {self.keyframe_fraction}.")
        if self.photo_pool < self.batch_size or not 0 <= self.photo_refresh <= self.photo_pool:
            raise ConfigValueError("photo_pool", f"--photo-pool ({self.photo_pool}) must hold a batch ({self.batch_size}) "
                                                 f"and at least --photo-refresh ({self.photo_refresh}) photos.")


def face_photos(worlds: list, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n fresh face photos of random characters: uint8 [n, 112, 112, 3] RGB, global labels [n].

    Global label = offset of the world + the character's index in it.
    """
    from mdream.toyworld import render_face_photo

    offsets = np.cumsum([0] + [len(w.characters) for w in worlds])
    faces, labels = [], []
    for _ in range(n):
        k = int(rng.integers(len(worlds)))
        c = int(rng.integers(len(worlds[k].characters)))
        faces.append(render_face_photo(worlds[k], worlds[k].characters[c].id, rng, size=FACE_SIZE))
        labels.append(int(offsets[k] + c))
    return np.stack(faces), np.asarray(labels, np.int64)


def face_crops(worlds: list, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n face crops cut by ``face_boxes`` from fresh keyframes rendered at 32, 64 or 128 px.

    Boxes are jittered by up to 10 % and resized to 112, so the embedder also reads the small,
    imprecisely placed faces of generated frames. Returns uint8 [n, 112, 112, 3] RGB, labels [n].
    """
    from mdream.toyworld import face_boxes, render_keyframe

    offsets = np.cumsum([0] + [len(w.characters) for w in worlds])
    faces: list[np.ndarray] = []
    labels: list[int] = []
    while len(faces) < n:
        k = int(rng.integers(len(worlds)))
        world = worlds[k]
        shot = random_shot(world, rng, min_cast=1)
        size = int(rng.choice([32, 64, 128]))
        frame = render_keyframe(world, shot, size, rng)
        for character_id, box in face_boxes(shot, size, world):
            x0, y0, x1, y1 = square_box(box, size, size)
            bw, bh = x1 - x0, y1 - y0
            jitter = rng.uniform(-0.1, 0.1, 4) * np.array([bw, bh, bw, bh])
            faces.append(crop_resized(frame, (x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3])))
            labels.append(int(offsets[k] + world.character_index[character_id]))
    return np.stack(faces[:n]), np.asarray(labels[:n], np.int64)


class FaceModel(nn.Module):
    """The embedder and its ArcFace head: what trains."""

    def __init__(self, net: FaceEmbedderNet, head: ArcMarginHead):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, faces: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.net(faces), labels), labels)


class FaceTask:
    """One step: photos from the pool (a few replaced by fresh renders) and face crops of fresh keyframes, spoiled."""

    unit = "faces"

    def __init__(self, model: FaceModel, worlds: list, pool: tuple[np.ndarray, np.ndarray], config: FaceTrainingConfig,
                 device: torch.device):
        self.model, self.worlds, self.config, self.device = model, worlds, config, device
        self.pool_faces, self.pool_labels = pool

    def sample(self, rng: np.random.Generator, size: int):
        config = self.config
        if config.photo_refresh:
            idx = rng.choice(config.photo_pool, config.photo_refresh, replace=False)
            self.pool_faces[idx], self.pool_labels[idx] = face_photos(self.worlds, len(idx), rng)
        n_crops = int(round(size * config.keyframe_fraction))
        idx = rng.choice(config.photo_pool, size - n_crops, replace=False)
        crops, crop_labels = face_crops(self.worlds, n_crops, rng)
        faces = np.concatenate([self.pool_faces[idx], crops])
        labels = np.concatenate([self.pool_labels[idx], crop_labels])
        x = degrade(normalise_faces(faces), rng, strength=float(rng.uniform(0.0, 1.0)))
        return x.to(self.device), torch.as_tensor(labels, device=self.device)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        return {"loss": model(*batch)}


def train_face_embedder(config: FaceTrainingConfig, out: str | Path, resume: str = "auto", given=None) -> Path:
    """Train (or resume) the toy face embedder with ArcFace loss; export ``out/toy_face_recognition.onnx``."""
    from mdream.toyworld import make_world

    config, out, start_from, accelerator = start_run(config, FaceTrainingConfig, out, resume, given)
    worlds = [make_world(s) for s in parse_int_tuple(config.world_seeds, "--world-seeds")]
    num_classes = sum(len(w.characters) for w in worlds)
    net = FaceEmbedderNet(FaceEmbedderConfig())
    model = FaceModel(net, ArcMarginHead(net.config.embedding_dim, num_classes, config.arc_scale, config.arc_margin))
    console.print(f"rendering a pool of {config.photo_pool} face photos")
    pool_rng = np.random.default_rng([config.seed, accelerator.process_index, 0xFACE])
    task = FaceTask(model, worlds, face_photos(worlds, config.photo_pool, pool_rng), config, accelerator.device)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="face embedder")
    onnx_path = out / "toy_face_recognition.onnx"
    if accelerator.is_main_process:
        net = result.model.net.cpu().eval()
        export_onnx(net, onnx_path)
        elapsed = json.loads((result.checkpoint / "state.json").read_text()).get("elapsed_s", 0.0)
        save_embedder_config(net.config, out / "toy_face_recognition.json", world_seeds=list(parse_int_tuple(config.world_seeds, "")),
                             steps=result.step, train_seconds=round(elapsed, 1), num_classes=num_classes,
                             preprocessing="insightface: BGR->RGB, (x-127.5)/127.5, 112x112")
        console.print(f"face embedder: {result.step} steps in {elapsed / 60:.1f} min -> {onnx_path}")
    accelerator.wait_for_everyone()
    return onnx_path


# ---------------------------------------------------------------------------------------------
# Frame analyser
# ---------------------------------------------------------------------------------------------


@dataclass
class AnalyserTrainingConfig(LoopConfig):
    """Settings of a frame-analyser run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "Frame analyser"

    # LoopConfig's fields, with this run's defaults (their docstrings are LoopConfig's)
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 1e-4
    checkpoint_every: int = 500

    world_seed: int = 0
    """The world whose scenes and characters are the classes."""
    pool_size: int = 12000
    """Rendered ground-truth frames kept in memory (64x64 uint8), re-used with fresh augmentation."""
    refresh_per_step: int = 8
    """Pool frames replaced by fresh renders every step (so the pool keeps changing)."""
    clean_fraction: float = 0.25
    """Fraction of batches left without degradation (the ceiling must stay exact)."""
    val_frames: int = 500
    """Fresh clean renders the finished model is measured on (written into its config.json)."""

    def check(self) -> None:
        super().check()
        if self.pool_size < self.batch_size or not 0 <= self.refresh_per_step <= self.pool_size:
            raise ConfigValueError("pool_size", f"--pool-size ({self.pool_size}) must hold a batch ({self.batch_size}) "
                                                f"and at least --refresh-per-step ({self.refresh_per_step}) frames.")
        if not 0 <= self.clean_fraction <= 1:
            raise ConfigValueError("clean_fraction", f"--clean-fraction must be in [0, 1], got {self.clean_fraction}.")


LABELS = ("scene", "chars", "palette", "trousers")
"""The analyser's targets: scene [n], chars [n, 3] (-1 empty), palette [n], trousers [n, 3] (-1 where nobody
stands or the camera does not show the legs: close-ups)."""


def render_analyser_samples(world, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n random ground-truth frames rendered at 32/64/128 and resized to 64 -> frames, labels (LABELS)."""
    from mdream.toyworld import render_keyframe, shot_labels

    frames = np.empty((n, ANALYSER_SIZE, ANALYSER_SIZE, 3), np.uint8)
    labels = {"scene": np.empty(n, np.int64), "chars": np.empty((n, 3), np.int64),
              "palette": np.empty(n, np.int64), "trousers": np.empty((n, 3), np.int64)}
    for i in range(n):
        shot = random_shot(world, rng)
        size = int(rng.choice([32, 64, 64, 128]))
        frame = render_keyframe(world, shot, size, rng)
        if size != ANALYSER_SIZE:
            frame = np.asarray(Image.fromarray(frame).resize((ANALYSER_SIZE, ANALYSER_SIZE), Image.BILINEAR))
        shot_label = shot_labels(world, shot)
        frames[i] = frame
        for name in LABELS:
            labels[name][i] = shot_label[name]
        if shot.camera == "close-up":
            labels["trousers"][i] = -1
    return frames, labels


class AnalyserTask:
    """One step: frames of the pool (a few replaced by fresh renders), most of them spoiled; scene + 3x cast loss."""

    unit = "frames"

    def __init__(self, model: FrameAnalyser, world, pool: tuple[np.ndarray, dict[str, np.ndarray]],
                 config: AnalyserTrainingConfig, device: torch.device):
        self.model, self.world, self.config, self.device = model, world, config, device
        self.frames, self.labels = pool
        self.empty_class = model.config.num_characters

    def sample(self, rng: np.random.Generator, size: int):
        if self.config.refresh_per_step:
            idx = rng.choice(len(self.frames), self.config.refresh_per_step, replace=False)
            self.frames[idx], fresh = render_analyser_samples(self.world, len(idx), rng)
            for name in LABELS:
                self.labels[name][idx] = fresh[name]
        idx = rng.choice(len(self.frames), size, replace=False)
        x = FrameAnalyser.preprocess(self.frames[idx])
        if rng.random() >= self.config.clean_fraction:
            x = degrade(x, rng, strength=float(rng.uniform(0.3, 1.0)))
        labels = {name: torch.as_tensor(self.labels[name][idx]).to(self.device) for name in LABELS}
        labels["chars"] = torch.where(labels["chars"] < 0, self.empty_class, labels["chars"])
        return x.to(self.device), labels

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        x, labels = batch
        scene_logits, cast_logits, feats = model(x)
        hidden = model.hidden(feats)
        scene = F.cross_entropy(scene_logits, labels["scene"])
        cast = F.cross_entropy(cast_logits.reshape(-1, cast_logits.shape[-1]), labels["chars"].reshape(-1))
        # hidden state: the palette always shows; trousers only where somebody stands and the legs are in frame
        palette = F.cross_entropy(hidden["palette"], labels["palette"])
        trousers_logits = hidden["trousers"].reshape(-1, hidden["trousers"].shape[-1])
        trousers_labels = labels["trousers"].reshape(-1)
        trousers = (F.cross_entropy(trousers_logits, trousers_labels, ignore_index=-1) if (trousers_labels >= 0).any()
                    else trousers_logits.sum() * 0)
        return {"loss": scene + 3 * cast + palette + trousers, "scene": scene.detach(), "cast": cast.detach(),
                "palette": palette.detach(), "trousers": trousers.detach()}


def _analyser_pool(world, config: AnalyserTrainingConfig, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pool of rendered frames and their labels, cached in the run folder (a damaged cache is rendered again)."""
    rng = np.random.default_rng([config.seed, 0])
    return rendered_pool(path, config.pool_size, "frames", LABELS, lambda n: render_analyser_samples(world, n, rng),
                         chunk=500, fits=lambda frames: len(frames) == config.pool_size)


def train_frame_analyser(config: AnalyserTrainingConfig, out: str | Path, resume: str = "auto", given=None) -> Path:
    """Train (or resume) the frame analyser on fresh toy renders; save ``out/frame_analyser/``."""
    from mdream.toyworld import make_world
    from mdream.toyworld.world import PALETTES, TROUSER_COLOURS

    config, out, start_from, accelerator = start_run(config, AnalyserTrainingConfig, out, resume, given)
    world = make_world(config.world_seed)
    model_config = FrameAnalyserConfig(
        num_scenes=len(world.scenes), num_characters=len(world.characters), world_seed=config.world_seed,
        scene_ids=[s.id for s in world.scenes], character_ids=[c.id for c in world.characters],
        num_palettes=len(PALETTES), num_trousers=len(TROUSER_COLOURS),
    )
    model = FrameAnalyser(model_config)
    with accelerator.main_process_first():
        pool = _analyser_pool(world, config, out / "pool.npz")
    task = AnalyserTask(model, world, pool, config, accelerator.device)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="frame analyser")
    folder = out / "frame_analyser"
    if accelerator.is_main_process:
        # held-out check on fresh clean renders (written into config.json as a training fact)
        model = result.model.cpu().eval()
        val_frames, val = render_analyser_samples(world, config.val_frames, np.random.default_rng([config.seed, 999]))
        pred = model.analyse(val_frames)
        elapsed = json.loads((result.checkpoint / "state.json").read_text()).get("elapsed_s", 0.0)
        shown = val["trousers"] >= 0  # somebody there, legs in frame
        facts = {
            "steps": result.step, "train_seconds": round(elapsed, 1),
            "val_scene_accuracy": float((pred["scene"] == val["scene"]).mean()),
            "val_position_accuracy": float((pred["chars"] == val["chars"]).mean()),
            "val_palette_accuracy": float((pred["palette"] == val["palette"]).mean()),
            "val_trousers_accuracy": float((pred["trousers"][shown] == val["trousers"][shown]).mean()),
        }
        model.save_pretrained(folder, **facts)
        console.print(f"frame analyser: {facts} -> {folder}")
    accelerator.wait_for_everyone()
    return folder


def install_face_embedder(onnx_path: Path, eval_dir: Path = ASSETS_DIR) -> Path:
    """Copy a trained embedder (ONNX + its JSON) into ``eval_dir`` (default: the package's assets); returns the ONNX."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_path, eval_dir / onnx_path.name)
    shutil.copy2(onnx_path.with_suffix(".json"), eval_dir / onnx_path.with_suffix(".json").name)
    return eval_dir / onnx_path.name


def install_reader(folder: Path, subfolder: str, eval_dir: Path = ASSETS_DIR, fp16: bool = False) -> Path:
    """Copy a trained evaluator reader (config.json + model.safetensors) into ``eval_dir/subfolder`` (default: the
    package's assets); ``fp16``: its weights stored as float16 (they load back into float32). Returns the folder."""
    target = eval_dir / subfolder
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(folder / name, target / name)
    if fp16:
        from mdream.training.export import store_half

        store_half(target)
    return target


def install_frame_analyser(folder: Path, eval_dir: Path = ASSETS_DIR, fp16: bool = False) -> Path:
    """Copy a trained analyser into ``eval_dir/frame_analyser`` (see :func:`install_reader`)."""
    return install_reader(folder, "frame_analyser", eval_dir, fp16)
