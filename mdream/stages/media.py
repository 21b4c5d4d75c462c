"""``mdream encode MEDIA...`` and ``mdream render TOKENS``: keyframe tokens for images and videos.

Images, folders of images and video files become keyframe tokens; a video is cut into shots with
PySceneDetect (content detector) and ``keyframes_per_shot`` frames are taken evenly inside each
shot. Each item's tokens are cached under a key of (file content, frame, encoder identity), so a
rerun only encodes new or changed files. The result is one safetensors file (``tokens
[M, N, d]``) with a JSON sidecar naming each row's source; ``render_tokens`` turns such a file
back into images (tokens only: the face and descriptor groups are left to their null embeddings).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mdream.cache import ArtifactStore, artifact_key, atomic_write_bytes
from mdream.errors import InputError
from mdream.images import read_rgb
from mdream.models.bundle import ModelBundle, hash_file
from mdream.stages.options import resolve_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
SCRIPT_SUFFIXES = {".yaml", ".yml", ".json"}
MEDIA_STAGE, MEDIA_STAGE_VERSION = "encode-media", "1"


def place(model, name: str, device: str, offload: bool):
    """``model`` on ``device``, or with ``offload`` kept in CPU memory with its large parts moved there while they run."""
    if not offload:
        return model.to(device)
    from mdream.models.offload import OffloadGroup

    return OffloadGroup(device).add(name, model)


@dataclass(frozen=True)
class MediaItem:
    """One keyframe to encode: a still image, or one frame of a video shot."""

    path: str
    frame: int | None = None  # frame index in the video; None for a still
    shot: int | None = None  # shot index in the video (PySceneDetect)


def is_script(path: Path) -> bool:
    return path.suffix.lower() in SCRIPT_SUFFIXES


def collect_media(inputs: list[Path], keyframes_per_shot: int = 1) -> list[MediaItem]:
    """Expand files and folders into keyframes, in the order given (folders sorted by name)."""
    if keyframes_per_shot < 1:
        raise InputError(f"--keyframes-per-shot must be >= 1, got {keyframes_per_shot}.")
    items: list[MediaItem] = []
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path} does not exist.", hint="pass image files, folders of images or video files")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not files:
                raise InputError(f"The folder {path} holds no images or videos ({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}).")
        else:
            files = [path]
        for file in files:
            suffix = file.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                items.append(MediaItem(str(file.resolve())))
            elif suffix in VIDEO_SUFFIXES:
                items.extend(video_keyframes(file, keyframes_per_shot))
            else:
                raise InputError(
                    f"{file} is neither an image nor a video.",
                    hint=f"images: {', '.join(sorted(IMAGE_SUFFIXES))}; videos: {', '.join(sorted(VIDEO_SUFFIXES))}",
                )
    return items


def video_keyframes(path: Path, per_shot: int) -> list[MediaItem]:
    """Frames taken evenly inside each shot that PySceneDetect finds (the whole video if no cut)."""
    from scenedetect import ContentDetector, detect
    from scenedetect.video_stream import VideoOpenFailure

    try:
        scenes = detect(str(path), ContentDetector(), start_in_scene=True)
    except (VideoOpenFailure, OSError) as exc:
        raise InputError(f"Cannot read the video {path}: {exc}") from None
    items = []
    for shot, (start, end) in enumerate(scenes):
        first, last = start.frame_num, max(end.frame_num - 1, start.frame_num)
        # centres of per_shot equal parts of [first, last]
        for k in range(per_shot):
            frame = first + round((k + 0.5) * (last - first + 1) / per_shot - 0.5)
            items.append(MediaItem(str(path.resolve()), frame=int(frame), shot=shot))
    return items


def read_item(item: MediaItem) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    if item.frame is None:
        return read_rgb(item.path)
    import cv2

    capture = cv2.VideoCapture(item.path)
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, item.frame)
        ok, bgr = capture.read()
    finally:
        capture.release()
    if not ok:
        raise InputError(f"Cannot read frame {item.frame} of {item.path}.")
    return bgr[:, :, ::-1].copy()


@dataclass
class MediaEncodeReport:
    output: Path
    items: int
    encoded: int
    reused: int
    token_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "output": str(self.output)}


def encode_media(
    inputs: list[Path],
    output: Path,
    bundle: str = "toy",
    cache_dir: Path | None = None,
    device: str = "auto",
    keyframes_per_shot: int = 1,
    force: bool = False,
    offload: bool = False,
) -> MediaEncodeReport:
    """Encode images / folders / videos into ``output`` (safetensors ``tokens [M, N, d]`` + ``.json``); ``offload``:
    the encoder's vision tower waits in CPU memory between uses (:mod:`mdream.models.offload`)."""
    import torch
    from safetensors.torch import save

    if output.suffix != ".safetensors":
        raise InputError(f"The tokens file must end in .safetensors, got {output.name}.")
    items = collect_media(inputs, keyframes_per_shot)
    model_bundle = ModelBundle.load(bundle)
    model_bundle.component("keyframe_encoder")  # NotBuiltError before any work when the bundle has none
    store = ArtifactStore(cache_dir or Path(os.environ.get("MDREAM_CACHE", ".mdream")))
    bundle_id = model_bundle.identity(["keyframe_encoder"])
    keys = [
        artifact_key(MEDIA_STAGE, MEDIA_STAGE_VERSION, bundle_id, {"file": hash_file(Path(i.path)), "frame": i.frame}, 0, [])
        for i in items
    ]
    encoder = None
    rows, encoded = [], 0
    for item, key in zip(items, keys, strict=True):
        art = None if force else store.open(MEDIA_STAGE, key)
        if art is None:
            if encoder is None:
                encoder = place(model_bundle.load("keyframe_encoder"), "keyframe_encoder", resolve_device(device),
                                offload)
            tokens = encoder.encode(read_item(item)[None])[0]  # [N, d]
            writer = store.claim(MEDIA_STAGE, key, wait=True, force=force)
            if writer is not None:  # None: another process published the same tokens meanwhile
                with writer:
                    writer.save_tensors("tokens", {"tokens": tokens.contiguous()})
                    writer.metadata.update(asdict(item))
            encoded += 1
            rows.append(tokens)
        else:
            rows.append(art.load_tensors("tokens")["tokens"])
    tokens = torch.stack(rows) if rows else torch.zeros(0)
    output.parent.mkdir(parents=True, exist_ok=True)
    # atomic_write: one temp name that a rerun recognises, and the same file mode as every output
    atomic_write_bytes(output, save({"tokens": tokens.contiguous()}, metadata={"bundle": model_bundle.name}))
    sidecar = {"bundle": model_bundle.name, "items": [asdict(i) for i in items]}
    atomic_write_bytes(output.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
    return MediaEncodeReport(output, len(items), encoded, len(items) - encoded, tuple(tokens.shape))


def render_tokens(
    tokens_file: Path,
    out_dir: Path,
    bundle: str = "toy",
    device: str = "auto",
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    sampler: str | None = None,
    offload: bool = False,
) -> list[Path]:
    """Render every row of a tokens file to ``out_dir/NNNN.png`` (tokens only; seeded per row; ``offload``: the
    decoder's UNet and VAE take turns on the device, :mod:`mdream.models.offload`).

    ``num_inference_steps``, ``guidance_scale`` and ``sampler`` default to the bundle's tuned settings.
    """
    import torch
    from PIL import Image
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tokens = load_file(str(tokens_file))["tokens"]
    except (OSError, SafetensorError, KeyError) as exc:
        raise InputError(f"{tokens_file} is not a tokens file written by `mdream encode`: {exc}") from None
    from mdream.stages.definitions import sampling_defaults

    model_bundle = ModelBundle.load(bundle)
    ref = model_bundle.component("keyframe_decoder")
    decoder = model_bundle.load("keyframe_decoder")
    sampler = sampler or ref.sampler
    if sampler:
        type(decoder).make_scheduler(sampler, decoder.scheduler.config)  # an unknown name fails before any work
    default_steps, default_guidance, _ = sampling_defaults(ref.location, ref)  # identity guidance needs faces: none here
    dev = resolve_device(device)
    decoder = place(decoder, "keyframe_decoder", dev, offload)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(tokens), 16):
        batch = tokens[start : start + 16]
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(batch))]
        images = decoder.generate(
            batch.to(dev),
            num_inference_steps=num_inference_steps or default_steps,
            guidance_scale=guidance_scale if guidance_scale is not None else default_guidance,
            generator=generators,
            scheduler=sampler,
        ).images
        for i, image in enumerate(images):
            path = out_dir / f"{start + i:04d}.png"
            Image.fromarray(image).save(path)
            paths.append(path)
    return paths
