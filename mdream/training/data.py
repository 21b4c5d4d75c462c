"""Training data held in memory: frames, texts, labels, face-embedding banks, and where frames come from.

A run's frames come from a :class:`FrameSource` (``--data``): random renders of the toy world (every
scene x cast combination, not only story episodes; the default), a ``mdream toyworld dataset`` folder
(``ToyDataset`` shards), or a folder of images such as frames of a film, each with an optional caption.
Every source yields a :class:`FrameSet`; only toy-world frames carry the ground truth (scene, cast, masks)
that toy-only settings need. At 32x32 a frame is 3 KB, so tens of thousands fit in memory on any machine.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from rich.progress import Progress

from mdream.errors import InputError
from mdream.training.common import content_key, load_keyed_cache, save_keyed_cache
from mdream.training.config import ConfigValueError
from mdream.training.loop import LoopConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RunConfig(LoopConfig):
    """The training loop's settings plus where the training frames come from (trainers that read frames)."""

    help_panel: ClassVar[str] = "Data"

    data: str = ""
    """Training frames: empty: random renders of the toy world; a `mdream toyworld dataset` folder; or a folder of images (PNG/JPEG, e.g. frames of a film), each captioned by a same-named .txt file."""
    world_seed: int = 0
    """Seed of the toy world to render frames from (when no --data)."""
    num_frames: int = 20000
    """Training frames (rendered once and cached in the run folder, or the first N of --data; 0: all of --data)."""

    def check(self) -> None:
        super().check()
        if self.num_frames < 0:
            raise ConfigValueError("num_frames", f"--num-frames must be >= 0, got {self.num_frames}.")


@dataclass
class FrameSet:
    """Frames and their ground truth, row-aligned."""

    frames: np.ndarray
    """uint8 [M, S, S, 3] keyframes."""
    descriptors: list[str]
    """The detailed description of each frame's shot."""
    scene: np.ndarray
    """int64 [M] scene index."""
    chars: np.ndarray
    """int64 [M, 3] character index at left/center/right, -1 where empty."""
    world_seed: int
    """The toy world the frames come from."""
    shots: list | None = None
    """The ShotSpec of each frame when rendered here (not saved; evaluation uses it for face boxes)."""
    figures: np.ndarray | None = None
    """bool [M, S, S]: the pixels the cast's figures cover (rendered here with ``figures=True``; saved)."""
    heads: np.ndarray | None = None
    """bool [M, S, S]: the figure pixels on the cast's heads (skin, eyes, hair cap; rendered with ``figures``; saved)."""
    lookalike_shares: np.ndarray | None = None
    """float32 [M, S, S]: the pixels that tell the cast from their look-alikes, each pair an equal part of 1
    (``toyworld.lookalike_shares``; saved)."""
    palette: np.ndarray | None = None
    """int64 [M]: the toy world's hidden palette of each frame's scene (toy-world frames; saved)."""
    trousers: np.ndarray | None = None
    """int64 [M, 3]: the hidden trousers of the character at left/center/right, -1 where empty (toy-world frames; saved)."""
    trousers_shares: np.ndarray | None = None
    """float32 [M, S, S]: the pixels that show the cast's trousers, each member an equal part of 1
    (``toyworld.trousers_shares``; saved)."""

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, index: np.ndarray) -> FrameSet:
        shots = [self.shots[i] for i in index] if self.shots is not None else None
        figures = self.figures[index] if self.figures is not None else None
        heads = self.heads[index] if self.heads is not None else None
        shares = self.lookalike_shares[index] if self.lookalike_shares is not None else None
        palette = self.palette[index] if self.palette is not None else None
        trousers = self.trousers[index] if self.trousers is not None else None
        trouser_shares = self.trousers_shares[index] if self.trousers_shares is not None else None
        return FrameSet(self.frames[index], [self.descriptors[i] for i in index], self.scene[index], self.chars[index],
                        self.world_seed, shots, figures, heads, shares, palette, trousers, trouser_shares)

    def save(self, path: Path, key: str) -> None:
        """Written through a temporary file (an interrupted run never leaves a truncated frame cache), with the key
        of what the frames were rendered from (``frame_set``'s)."""
        extra = {"figures": np.packbits(self.figures, axis=-1)} if self.figures is not None else {}
        if self.heads is not None:
            extra["heads"] = np.packbits(self.heads, axis=-1)
        if self.lookalike_shares is not None:
            # float16 keeps a part as small as one of 5 pairs over 600 pixels (3e-4) to 3 digits, at half the size
            extra["lookalike_shares"] = self.lookalike_shares.astype(np.float16)
        if self.trousers_shares is not None:
            extra["trousers_shares"] = self.trousers_shares.astype(np.float16)
        if self.palette is not None and self.trousers is not None:
            extra["palette"], extra["trousers"] = self.palette, self.trousers
        save_keyed_cache(path, key, frames=self.frames, scene=self.scene, chars=self.chars, world_seed=self.world_seed,
                         descriptors=np.array(json.dumps(self.descriptors)), **extra)

    @classmethod
    def from_arrays(cls, z: Mapping[str, np.ndarray]) -> FrameSet:
        """The frame set of a saved cache's arrays."""
        size = z["frames"].shape[2]
        figures = np.unpackbits(z["figures"], axis=-1, count=size).astype(bool) if "figures" in z else None
        heads = np.unpackbits(z["heads"], axis=-1, count=size).astype(bool) if "heads" in z else None
        # (a cache holding a bool "lookalikes" mask without the parts is not read, so it is rendered again)
        shares = z["lookalike_shares"].astype(np.float32) if "lookalike_shares" in z else None
        trouser_shares = z["trousers_shares"].astype(np.float32) if "trousers_shares" in z else None
        hidden = {"palette": z["palette"], "trousers": z["trousers"]} if "palette" in z and "trousers" in z else {}
        return cls(z["frames"], json.loads(str(z["descriptors"])), z["scene"], z["chars"], int(z["world_seed"]),
                   figures=figures, heads=heads, lookalike_shares=shares, trousers_shares=trouser_shares, **hidden)

    @classmethod
    def load(cls, path: Path) -> FrameSet:
        with np.load(path) as z:
            return cls.from_arrays(z)


def load_toy_dataset(data_dir: str | Path, size: int | None = None, limit: int | None = None) -> FrameSet:
    """All shots of a ``mdream toyworld dataset`` folder (frames resized to ``size`` if they differ)."""
    from mdream.toyworld.dataset import ToyDataset

    data_dir = Path(data_dir)
    if not (data_dir / "dataset.json").is_file():
        raise InputError(f"{data_dir} is not a toy dataset (no dataset.json).", hint="Write one with `mdream toyworld dataset`.")
    ds = ToyDataset(data_dir, cache_shards=1)
    frames, scene, chars, texts, palette, trousers = [], [], [], [], [], []
    for k, shard in enumerate(ds.info.shards):
        arrays = ds.shard_arrays(k)
        lines = (data_dir / f"{shard['name']}.jsonl").read_text().splitlines()
        frames.append(arrays["frames"])
        scene.append(arrays["scene"])
        chars.append(arrays["chars"])
        if "palette" in arrays and "trousers" in arrays:
            palette.append(arrays["palette"])
            trousers.append(arrays["trousers"])
        texts.extend(json.loads(line)["descriptor"] for line in lines)
        if limit is not None and sum(len(f) for f in frames) >= limit:
            break
    hidden = len(palette) == len(frames)  # a dataset written before the toy world had hidden state has none
    out = FrameSet(np.concatenate(frames), texts, np.concatenate(scene).astype(np.int64),
                   np.concatenate(chars).astype(np.int64), ds.info.world_seed,
                   palette=np.concatenate(palette).astype(np.int64) if hidden else None,
                   trousers=np.concatenate(trousers).astype(np.int64) if hidden else None)
    if limit is not None:
        out = out.subset(np.arange(min(limit, len(out))))
    if size is not None and out.frames.shape[1] != size:
        out.frames = resize_frames(out.frames, size)
    return out


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


def render_random_frames(world_seed: int, n: int, size: int, seed: int, progress: bool = True,
                         figures: bool = False, lookalikes: bool = False, trousers: bool = False) -> FrameSet:
    """``n`` keyframes of uniformly random shots (any scene, 0-3 random characters).

    With ``figures`` each frame's figure mask is rendered too (about twice the time), and its head
    mask: the figure pixels on the cast's heads. With ``lookalikes`` each frame's look-alike share map
    too (``toyworld.lookalike_shares``: one more render per look-alike of each cast member). With ``trousers``
    the share map of the cast's trousers (``toyworld.trousers_shares``: one more render per cast member). The
    frames are the same pixels either way.
    """
    from mdream.eval.toy_samples import random_shot
    from mdream.toyworld import (
        head_mask,
        lookalike_shares,
        make_world,
        render_keyframe,
        render_keyframe_with_figures,
        shot_labels,
        shot_text,
        trousers_shares,
    )

    world = make_world(world_seed)
    rng = np.random.default_rng([seed, world_seed, 0x70C])
    frames = np.empty((n, size, size, 3), np.uint8)
    scene = np.empty(n, np.int64)
    chars = np.empty((n, 3), np.int64)
    palette = np.empty(n, np.int64)
    trouser_labels = np.empty((n, 3), np.int64)
    masks = np.zeros((n, size, size), bool) if figures else None
    head_masks = np.zeros((n, size, size), bool) if figures else None
    lookalike_maps = np.zeros((n, size, size), np.float32) if lookalikes else None
    trouser_maps = np.zeros((n, size, size), np.float32) if trousers else None
    texts, shots = [], []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"rendering {n} toy frames", total=n)
        for i in range(n):
            shot = random_shot(world, rng)
            before = copy.deepcopy(rng) if lookalikes or trousers else None  # the state the frame is rendered from
            if figures:
                frames[i], masks[i] = render_keyframe_with_figures(world, shot, size, rng)
                head_masks[i] = masks[i] & head_mask(shot, size, world)
            else:
                frames[i] = render_keyframe(world, shot, size, rng)
            if lookalikes:
                lookalike_maps[i] = lookalike_shares(world, shot, size, before, frames[i])
            if trousers:
                trouser_maps[i] = trousers_shares(world, shot, size, before, frames[i])
            labels = shot_labels(world, shot)
            scene[i], chars[i] = labels["scene"], labels["chars"]
            palette[i], trouser_labels[i] = labels["palette"], labels["trousers"]
            texts.append(shot_text(world, shot)[1])
            shots.append(shot)
            if i % 256 == 0:
                bar.update(task, completed=i)
    return FrameSet(frames, texts, scene, chars, world_seed, shots, masks, head_masks, lookalike_maps, palette,
                    trouser_labels, trouser_maps)


def check_dataset_masks(data: str | None, needs_masks: bool) -> None:
    """Refuse a frames folder (--data) where the loss weights need figure, look-alike or trouser masks: only renders
    carry them."""
    if data and needs_masks:
        raise InputError(f"--data {data}: frame folders carry no figure masks, which --character-weight, "
                         "--lookalike-share and --trousers-share need.",
                         hint="Leave --data out (frames are then rendered with masks) or set --character-weight 1, "
                              "--lookalike-share 0 and --trousers-share 0.")


def frame_set(data: str | None, world_seed: int, n: int, size: int, seed: int, cache: Path | None,
              figures: bool = False, heads: bool = False, lookalikes: bool = False, hidden: bool = False,
              trousers: bool = False) -> FrameSet:
    """A dataset folder when given, else random renders (cached in ``cache`` so a resume sees the same frames).

    ``figures`` / ``heads`` / ``lookalikes`` / ``trousers``: the renders must carry those masks; ``hidden``: the hidden-state
    labels (palette, trousers). A cache written without them is rendered again (the same seeds give the same
    frames) and replaced.
    """
    figures = figures or heads
    if data:
        check_dataset_masks(data, figures or lookalikes or trousers)
        return load_toy_dataset(data, size=size, limit=n or None)
    # frames of another world, seed, size or count (a cache copied from another run) are rendered again, never reused
    key = content_key("random frames", 2, world_seed, n, size, seed)  # 2: hidden palette and trousers
    arrays = load_keyed_cache(cache, key) if cache is not None else None
    cached = FrameSet.from_arrays(arrays) if arrays is not None else None
    if (cached is not None and (cached.figures is not None or not figures) and (cached.heads is not None or not heads)
            and (cached.lookalike_shares is not None or not lookalikes) and (cached.palette is not None or not hidden)
            and (cached.trousers_shares is not None or not trousers)):
        return cached
    frames = render_random_frames(world_seed, n, size, seed, figures=figures, lookalikes=lookalikes, trousers=trousers)
    if cache is not None:
        frames.save(cache, key)
    return frames


def face_embedding_bank(world_seed: int, embedder_path: str | Path, photos_per_character: int, seed: int) -> np.ndarray:
    """float32 [C, P, 512]: P face-photo embeddings per world character, through the face embedder.

    The renderer's face group sees one of these per cast member, drawn at random each step (the
    paper's face-embedding randomisation), so it learns identity, not one photo.
    """
    from mdream.models.face_embedder import FaceIdentityEmbedder
    from mdream.toyworld import make_world, render_face_photo

    embedder = FaceIdentityEmbedder(embedder_path)
    world = make_world(world_seed)
    rng = np.random.default_rng([seed, world_seed, 0xFACE])
    photos = np.stack([render_face_photo(world, c.id, rng) for c in world.characters for _ in range(photos_per_character)])
    emb = embedder.embed(photos)
    return emb.reshape(len(world.characters), photos_per_character, -1).astype(np.float32)


def character_references(bank: np.ndarray) -> np.ndarray:
    """float32 [C, 512]: each character's mean photo embedding, L2-normalised (its identity reference)."""
    references = bank.mean(axis=1)
    return (references / np.linalg.norm(references, axis=1, keepdims=True)).astype(np.float32)


def character_text_embeddings(world_seed: int, text_encoder) -> np.ndarray:
    """float32 [C, D]: each toy character's description (the script's ``description``) through the text encoder."""
    from mdream.toyworld import make_world

    world = make_world(world_seed)
    return text_encoder.encode([c.describe() for c in world.characters]).float().numpy()


def character_text_for_batch(chars: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per frame, the description embedding of the character in each slot (zeros where empty): [B, 3, D]."""
    out = np.zeros((*chars.shape, table.shape[-1]), np.float32)
    occupied = chars >= 0
    out[occupied] = table[chars[occupied]]
    return out


def faces_for_batch(chars: np.ndarray, bank: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, one random photo embedding per cast member in position order: [B, 3, 512], mask [B, 3]."""
    b = len(chars)
    dim = bank.shape[-1] if bank is not None else 512
    faces = np.zeros((b, 3, dim), np.float32)
    mask = chars >= 0
    if bank is not None:
        photo = rng.integers(bank.shape[1], size=(b, 3))
        rows, cols = np.nonzero(mask)
        faces[rows, cols] = bank[chars[rows, cols], photo[rows, cols]]
    else:
        mask = np.zeros_like(mask)
    return faces, mask


# ---- frame sources -----------------------------------------------------------------------------


class FrameSource(ABC):
    """Where a run's training frames come from: ``load`` gives the training frames, ``held_out`` others.

    A trainer asks for what it needs (``masks``: figure and look-alike masks for the toy loss weights) and a
    source that cannot give it refuses with an ``InputError`` before anything is written.
    """

    toy: ClassVar[bool] = False
    """Whether the frames carry toy-world ground truth (scene and cast labels, ``world_seed``)."""

    @abstractmethod
    def describe(self) -> str:
        """A few words for log lines and error messages."""

    @abstractmethod
    def load(self, n: int, size: int, cache: Path | None = None, *, masks: Collection[str] = ()) -> FrameSet:
        """``n`` training frames (0: all) at ``size`` x ``size`` px; ``cache``: a run-folder file a source may keep
        them in, so a resume sees the same frames; ``masks``: the masks to render with them ("figures", "lookalikes",
        "trousers")
        and "hidden": the toy world's hidden-state labels."""

    @abstractmethod
    def held_out(self, n: int, size: int, cache: Path | None = None) -> FrameSet:
        """``n`` frames never in ``load``'s, for held-out measurements."""

    def check(self, *, masks: bool = False) -> None:
        """Refuse up front what ``load`` would refuse (``masks``: whether masks will be asked for)."""
        check_dataset_masks(self.describe(), masks)


class ToyWorldFrames(FrameSource):
    """Random shots of a toy world, rendered on the spot (with masks when asked) and cached in the run folder."""

    toy = True

    def __init__(self, world_seed: int, seed: int):
        self.world_seed, self.seed = world_seed, seed

    def describe(self) -> str:
        return f"renders of toy world {self.world_seed}"

    def check(self, *, masks: bool = False) -> None:
        """Renders carry every mask."""

    def load(self, n: int, size: int, cache: Path | None = None, *, masks: Collection[str] = ()) -> FrameSet:
        return frame_set("", self.world_seed, n, size, self.seed, cache, figures="figures" in masks,
                         lookalikes="lookalikes" in masks, hidden="hidden" in masks, trousers="trousers" in masks)

    def held_out(self, n: int, size: int, cache: Path | None = None) -> FrameSet:
        return frame_set("", self.world_seed, n, size, self.seed + 1_000_003, cache)


class ToyDatasetFrames(FrameSource):
    """A ``mdream toyworld dataset`` folder: story episodes with their labels, no masks."""

    toy = True

    def __init__(self, folder: Path, seed: int):
        self.folder, self.seed = folder, seed

    def describe(self) -> str:
        return str(self.folder)

    def load(self, n: int, size: int, cache: Path | None = None, *, masks: Collection[str] = ()) -> FrameSet:
        self.check(masks=bool(set(masks) - {"hidden"}))  # its episodes carry the hidden-state labels
        return load_toy_dataset(self.folder, size=size, limit=n or None)

    def held_out(self, n: int, size: int, cache: Path | None = None) -> FrameSet:
        # random shots of the dataset's world: its episodes are all training frames
        from mdream.toyworld.dataset import ToyDataset

        world_seed = ToyDataset(self.folder, cache_shards=1).info.world_seed
        return ToyWorldFrames(world_seed, self.seed).held_out(n, size, cache)


class ImageFolderFrames(FrameSource):
    """A folder of images (sorted by name; PNG, JPEG or WebP), each captioned by a same-named ``.txt`` file (empty
    when there is none). Frames are centre-cropped to a square and resized. The last ``holdout`` images are kept
    out of training for ``held_out``. No labels: scene and cast read -1."""

    def __init__(self, folder: Path, holdout: int = 0):
        self.folder, self.holdout = folder, holdout
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(self.files) <= holdout:
            raise InputError(f"--data {folder}: {len(self.files)} images, and {holdout} are to be held out: "
                             "nothing left to train on.", hint="Add images, or hold out fewer.")

    def describe(self) -> str:
        return str(self.folder)

    def _read(self, files: list[Path], size: int) -> FrameSet:
        from PIL import Image

        frames = np.empty((len(files), size, size, 3), np.uint8)
        texts = []
        for i, path in enumerate(files):
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    side = min(image.size)
                    left, top = (image.width - side) // 2, (image.height - side) // 2
                    image = image.crop((left, top, left + side, top + side))
                    frames[i] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
            except OSError as exc:
                raise InputError(f"--data {self.folder}: {path.name} is not a readable image ({exc}).") from exc
            caption = path.with_suffix(".txt")
            texts.append(caption.read_text().strip() if caption.is_file() else "")
        unknown = np.full(len(files), -1, np.int64)
        return FrameSet(frames, texts, unknown, np.full((len(files), 3), -1, np.int64), -1)

    def load(self, n: int, size: int, cache: Path | None = None, *, masks: Collection[str] = ()) -> FrameSet:
        self.check(masks=bool(masks))
        files = self.files[: len(self.files) - self.holdout]
        return self._read(files[:n] if n else files, size)

    def held_out(self, n: int, size: int, cache: Path | None = None) -> FrameSet:
        return self._read(self.files[len(self.files) - min(n, self.holdout):], size)


def open_frame_source(data: str, world_seed: int, seed: int, holdout: int = 0) -> FrameSource:
    """The frame source ``--data`` names: empty: toy-world renders; a folder with dataset.json: a toy dataset; a
    folder of images: those (``holdout``: how many of them to keep out for ``held_out``)."""
    if not data:
        return ToyWorldFrames(world_seed, seed)
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data {data}: no such folder.",
                         hint="Name a `mdream toyworld dataset` folder or a folder of images, or leave --data out.")
    if (folder / "dataset.json").is_file():
        return ToyDatasetFrames(folder, seed)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        return ImageFolderFrames(folder, holdout)
    raise InputError(f"--data {data}: neither a toy dataset (no dataset.json) nor a folder of images.",
                     hint="Write a toy dataset with `mdream toyworld dataset`, or put PNG/JPEG frames there.")
