"""Training entry points of the evaluator's two models (reproduce the shipped weights).

    python -m mdream.eval.training face --out runs/eval_face          # -> toy_face_recognition.onnx
    python -m mdream.eval.training analyser --out runs/eval_analyser  # -> frame_analyser/

Both train on fresh toy-world renders (no dataset on disk), checkpoint every few hundred steps and
resume (``--resume auto|PATH|none``); hyperparameters are saved beside the checkpoints as
``hparams.json``. Keep them nice'd on shared CPUs: ``nice -n 10 python -m mdream.eval.training ...``.
``--install`` copies the result into ``mdream/assets/eval/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mdream.cache import atomic_write
from mdream.eval.face_embedder import (
    FACE_SIZE,
    ArcMarginHead,
    FaceEmbedderConfig,
    FaceEmbedderNet,
    export_onnx,
    normalise_faces,
    save_config,
)
from mdream.eval.frame_analyser import ANALYSER_SIZE, FrameAnalyser, FrameAnalyserConfig
from mdream.training.common import load_cache

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval"
console = Console(stderr=True)


# ---------------------------------------------------------------------------------------------
# Toy-world samples
# ---------------------------------------------------------------------------------------------


def random_shot(world, rng: np.random.Generator, min_cast: int = 0):
    """A uniformly random shot of `world`: any scene, 0-3 distinct characters at random positions.

    Episodes follow a story; the analyser and embedder want every combination, so they sample here.
    """
    from mdream.toyworld.episode import CastMember, ShotSpec
    from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS, POSITIONS

    n_cast = int(rng.choice(np.arange(min_cast, 4)))
    chars = rng.choice(len(world.characters), size=n_cast, replace=False)
    positions = sorted(rng.choice(3, size=n_cast, replace=False))
    cast = tuple(
        CastMember(
            world.characters[int(c)].id,
            POSITIONS[int(p)],
            str(rng.choice(ACTIONS)),
            str(rng.choice(EXPRESSIONS)),
        )
        for c, p in zip(chars, positions, strict=True)
    )
    cameras = CAMERAS if n_cast < 3 else tuple(c for c in CAMERAS if c != "close-up")
    return ShotSpec(world.scenes[int(rng.integers(len(world.scenes)))].id, cast, str(rng.choice(cameras)))


def square_box(box: tuple[float, float, float, float], height: int, width: int) -> tuple[float, ...]:
    """Undo the frame clipping of a square face box: extend the clipped side past the frame edge.

    ``face_boxes`` clips boxes to the frame; resizing a clipped (non-square) box to 112x112 would
    stretch the face, so the crop is taken square and edge-padded instead.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    if x1 - x0 < side:
        if x0 <= 0:
            x0 = x1 - side
        else:
            x1 = x0 + side
    if y1 - y0 < side:
        if y0 <= 0:
            y0 = y1 - side
        else:
            y1 = y0 + side
    return (x0, y0, x1, y1)


def crop_resized(frame: np.ndarray, box: tuple[float, float, float, float], size: int = FACE_SIZE) -> np.ndarray:
    """Cut box (x0, y0, x1, y1) out of frame [H, W, 3] (edge-padded if it leaves the frame) -> [size, size, 3]."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


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
class FaceTrainingConfig:
    """Hyperparameters of the face-embedder training (saved as hparams.json)."""

    world_seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Worlds whose characters are the identity classes (world 0 is the evaluator's world)."""
    steps: int = 700
    """Optimizer steps."""
    batch_size: int = 64
    """Faces per step: half photos, half crops cut from rendered keyframes."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay after a short warm-up)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
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
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    seed: int = 0
    """Seed of the sample stream and the initialisation."""
    threads: int = 2
    """torch CPU threads."""


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


def _lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


def _resolve_resume(resume: str, out: Path) -> Path | None:
    if resume == "none":
        return None
    if resume == "auto":
        ckpt = out / "checkpoint.pt"
        return ckpt if ckpt.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise typer.BadParameter(f"no checkpoint at {path}")
    return path


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console,
    )


def train_face_embedder(config: FaceTrainingConfig, out: Path, resume: str = "auto") -> Path:
    """Train the toy face embedder with ArcFace loss; export ``out/toy_face_recognition.onnx``."""
    from mdream.toyworld import make_world

    torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hparams.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    worlds = [make_world(s) for s in config.world_seeds]
    num_classes = sum(len(w.characters) for w in worlds)
    torch.manual_seed(config.seed)
    net = FaceEmbedderNet(FaceEmbedderConfig())
    head = ArcMarginHead(net.config.embedding_dim, num_classes, config.arc_scale, config.arc_margin)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    step, elapsed = 0, 0.0
    ckpt_path = _resolve_resume(resume, out)
    if ckpt_path is not None:
        ckpt = torch.load(ckpt_path, weights_only=False)
        net.load_state_dict(ckpt["net"])
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        console.print(f"resumed from {ckpt_path} at step {step}")
    rng = np.random.default_rng([config.seed, step])  # a fresh stream after a resume
    console.print(f"rendering a pool of {config.photo_pool} face photos")
    pool_faces, pool_labels = face_photos(worlds, config.photo_pool, rng)
    n_crops = int(round(config.batch_size * config.keyframe_fraction))

    def save() -> None:
        state = {"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                 "step": step, "elapsed_s": elapsed}
        atomic_write(out / "checkpoint.pt", lambda f: torch.save(state, f))

    t_start = time.time() - elapsed
    running = None
    with _progress() as progress:
        task = progress.add_task("face embedder", total=config.steps, completed=step, info="")
        net.train()
        while step < config.steps:
            if config.photo_refresh:
                idx = rng.choice(config.photo_pool, config.photo_refresh, replace=False)
                pool_faces[idx], pool_labels[idx] = face_photos(worlds, len(idx), rng)
            idx = rng.choice(config.photo_pool, config.batch_size - n_crops, replace=False)
            crops, crop_labels = face_crops(worlds, n_crops, rng)
            faces = np.concatenate([pool_faces[idx], crops])
            labels = np.concatenate([pool_labels[idx], crop_labels])
            x = degrade(normalise_faces(faces), rng, strength=float(rng.uniform(0.0, 1.0)))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, config.steps, config.lr)
            logits = head(net(x), torch.as_tensor(labels))
            loss = F.cross_entropy(logits, torch.as_tensor(labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.time() - t_start
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            progress.update(task, completed=step, info=f"loss {running:.3f}")
            if step % 20 == 0:
                console.log(f"step {step} loss {running:.4f} elapsed {elapsed:.0f}s")
            if step % config.checkpoint_every == 0:
                save()
    save()
    net.eval()
    onnx_path = export_onnx(net, out / "toy_face_recognition.onnx")
    save_config(net.config, out / "toy_face_recognition.json", world_seeds=list(config.world_seeds),
                steps=step, train_seconds=round(elapsed, 1), num_classes=num_classes,
                preprocessing="insightface: BGR->RGB, (x-127.5)/127.5, 112x112")
    console.print(f"face embedder: {step} steps in {elapsed / 60:.1f} min -> {onnx_path}")
    return onnx_path


# ---------------------------------------------------------------------------------------------
# Frame analyser
# ---------------------------------------------------------------------------------------------


@dataclass
class AnalyserTrainingConfig:
    """Hyperparameters of the frame-analyser training (saved as hparams.json)."""

    world_seed: int = 0
    """The world whose scenes and characters are the classes."""
    pool_size: int = 12000
    """Rendered ground-truth frames kept in memory (64x64 uint8), re-used with fresh augmentation."""
    refresh_per_step: int = 8
    """Pool frames replaced by fresh renders every step (so the pool keeps changing)."""
    steps: int = 6000
    """Optimizer steps (800 left it undertrained: 0.89 cast on 32-px ground truth, against 0.99 at 6000)."""
    batch_size: int = 64
    """Frames per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    clean_fraction: float = 0.25
    """Fraction of batches left without degradation (the ceiling must stay exact)."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""
    seed: int = 0
    """Seed of the sample stream and the initialisation."""
    threads: int = 2
    """torch CPU threads."""


def render_analyser_samples(world, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n random ground-truth frames rendered at 32/64/128 and resized to 64 -> frames, scenes, chars."""
    from mdream.toyworld import render_keyframe, shot_labels

    frames = np.empty((n, ANALYSER_SIZE, ANALYSER_SIZE, 3), np.uint8)
    scenes = np.empty(n, np.int64)
    chars = np.empty((n, 3), np.int64)
    for i in range(n):
        shot = random_shot(world, rng)
        size = int(rng.choice([32, 64, 64, 128]))
        frame = render_keyframe(world, shot, size, rng)
        if size != ANALYSER_SIZE:
            frame = np.asarray(Image.fromarray(frame).resize((ANALYSER_SIZE, ANALYSER_SIZE), Image.BILINEAR))
        labels = shot_labels(world, shot)
        frames[i], scenes[i], chars[i] = frame, labels["scene"], labels["chars"]
    return frames, scenes, chars


def train_frame_analyser(config: AnalyserTrainingConfig, out: Path, resume: str = "auto") -> Path:
    """Train the frame analyser on fresh toy renders; save ``out/frame_analyser/``."""
    from mdream.toyworld import make_world

    torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hparams.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    world = make_world(config.world_seed)
    model_config = FrameAnalyserConfig(
        num_scenes=len(world.scenes), num_characters=len(world.characters), world_seed=config.world_seed,
        scene_ids=[s.id for s in world.scenes], character_ids=[c.id for c in world.characters],
    )
    torch.manual_seed(config.seed)
    model = FrameAnalyser(model_config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, elapsed = 0, 0.0
    ckpt_path = _resolve_resume(resume, out)
    if ckpt_path is not None:
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        console.print(f"resumed from {ckpt_path} at step {step}")
    rng = np.random.default_rng([config.seed, step])

    pool_file = out / "pool.npz"

    def load_pool(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.load(path) as data:
            return data["frames"], data["scenes"], data["chars"]

    pool = load_cache(pool_file, load_pool)
    if pool is not None:
        frames, scenes, chars = pool
    else:
        frames = np.empty((config.pool_size, ANALYSER_SIZE, ANALYSER_SIZE, 3), np.uint8)
        scenes = np.empty(config.pool_size, np.int64)
        chars = np.empty((config.pool_size, 3), np.int64)
        chunk = 500
        with _progress() as progress:
            task = progress.add_task("rendering pool", total=config.pool_size, info="")
            for start in range(0, config.pool_size, chunk):
                n = min(chunk, config.pool_size - start)
                frames[start:start + n], scenes[start:start + n], chars[start:start + n] = (
                    render_analyser_samples(world, n, rng))
                progress.update(task, completed=start + n)
        atomic_write(pool_file, lambda f: np.savez(f, frames=frames, scenes=scenes, chars=chars))
    empty_class = model_config.num_characters

    def save() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed_s": elapsed}
        atomic_write(out / "checkpoint.pt", lambda f: torch.save(state, f))

    t_start = time.time() - elapsed
    running = None
    with _progress() as progress:
        task = progress.add_task("frame analyser", total=config.steps, completed=step, info="")
        model.train()
        while step < config.steps:
            if config.refresh_per_step:
                idx = rng.choice(len(frames), config.refresh_per_step, replace=False)
                frames[idx], scenes[idx], chars[idx] = render_analyser_samples(world, len(idx), rng)
            idx = rng.choice(len(frames), config.batch_size, replace=False)
            x = FrameAnalyser.preprocess(frames[idx])
            if rng.random() >= config.clean_fraction:
                x = degrade(x, rng, strength=float(rng.uniform(0.3, 1.0)))
            target_chars = torch.as_tensor(chars[idx])
            target_chars = torch.where(target_chars < 0, empty_class, target_chars)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, config.steps, config.lr)
            scene_logits, cast_logits, _ = model(x)
            loss = F.cross_entropy(scene_logits, torch.as_tensor(scenes[idx])) + F.cross_entropy(
                cast_logits.reshape(-1, cast_logits.shape[-1]), target_chars.reshape(-1)) * 3
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.time() - t_start
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            progress.update(task, completed=step, info=f"loss {running:.3f}")
            if step % 50 == 0:
                console.log(f"step {step} loss {running:.4f} elapsed {elapsed:.0f}s")
            if step % config.checkpoint_every == 0:
                save()
    save()
    # Held-out check on fresh clean renders (written into config.json as a training fact).
    val_frames, val_scenes, val_chars = render_analyser_samples(world, 500, np.random.default_rng([config.seed, 999]))
    pred = model.analyse(val_frames)
    facts = {
        "steps": step, "train_seconds": round(elapsed, 1),
        "val_scene_accuracy": float((pred["scene"] == val_scenes).mean()),
        "val_position_accuracy": float((pred["chars"] == val_chars).mean()),
    }
    folder = out / "frame_analyser"
    model.save_pretrained(folder, **facts)
    console.print(f"frame analyser: {facts} -> {folder}")
    return folder


# ---------------------------------------------------------------------------------------------
# CLI (python -m mdream.eval.training ...)
# ---------------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help="Train the evaluator's toy models.")


@app.command("face")
def face_cli(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (checkpoints, ONNX).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = FaceTrainingConfig.steps,
    batch_size: Annotated[int, typer.Option(help="Faces per step.")] = FaceTrainingConfig.batch_size,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = FaceTrainingConfig.threads,
    resume: Annotated[str, typer.Option(help="auto | none | PATH of a checkpoint.")] = "auto",
    install: Annotated[bool, typer.Option(help="Copy the ONNX into mdream/assets/eval/.")] = False,
) -> None:
    """Train the toy face-identity embedder (ArcFace loss) and export it to ONNX."""
    onnx_path = train_face_embedder(FaceTrainingConfig(steps=steps, batch_size=batch_size, threads=threads), out, resume)
    if install:
        ASSETS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy2(onnx_path, ASSETS_DIR / onnx_path.name)
        shutil.copy2(onnx_path.with_suffix(".json"), ASSETS_DIR / onnx_path.with_suffix(".json").name)


@app.command("analyser")
def analyser_cli(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (checkpoints, model).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = AnalyserTrainingConfig.steps,
    pool_size: Annotated[int, typer.Option(help="Rendered frames kept in memory.")] = AnalyserTrainingConfig.pool_size,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = AnalyserTrainingConfig.threads,
    resume: Annotated[str, typer.Option(help="auto | none | PATH of a checkpoint.")] = "auto",
    install: Annotated[bool, typer.Option(help="Copy the model into mdream/assets/eval/.")] = False,
) -> None:
    """Train the toy frame analyser (scene + who is where)."""
    folder = train_frame_analyser(AnalyserTrainingConfig(steps=steps, pool_size=pool_size, threads=threads), out, resume)
    if install:
        target = ASSETS_DIR / "frame_analyser"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(folder / name, target / name)


if __name__ == "__main__":
    app()
