"""Training sets of toy-world shots, streamed to disk in shards, and a map-style torch reader.

Layout of a dataset folder:
    dataset.json          world seed, sizes, counts, vocabularies, the shard list (DatasetInfo)
    shard-00000.npz       frames uint8 [n, H, W, 3], scene [n], chars [n, 3], camera [n],
                          actions [n, 3], expressions [n, 3], episode [n], shot [n],
                          hidden state: palette [n], trousers [n, 3] (int64;
                          per position left, center, right; -1 where nobody stands);
                          optional clips uint8 [n, T, H, W, 3] with clips[:, 0] == frames;
                          optional faces uint8 [n, F, 112, 112, 3] with face_ids [n, F]
                          (world character indices drawn uniformly, not from the shot)
    shard-00000.jsonl     one {"identifier", "descriptor", "episode", "shot"} per row

Rows run episode by episode: row g is shot g % shots_per_episode of episode
g // shots_per_episode (an episode made by make_episode(world, episode_seed(seed, e), ...)), in
shard g // shard_size. A row's pixels depend only on (seed, world seed, episode, shot), so the
result is the same whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mdream.cache import atomic_write
from mdream.toyworld.episode import Episode, episode_seed, make_episode, shot_labels, shot_text
from mdream.toyworld.render import FACE_SIZE, SIZES, render_clip, render_face_photo, render_keyframe
from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS, POSITIONS, World, make_world

DATASET_FORMAT_VERSION = 2


@dataclass
class DatasetInfo:
    """What dataset.json records about a written dataset."""

    format_version: int
    """Version of this layout."""
    world_seed: int
    """Seed of the world (make_world) whose characters and scenes the labels index."""
    seed: int
    """Seed of the episodes and renders."""
    size: int
    """Frame width and height in pixels."""
    episodes: int
    """Number of episodes."""
    shots_per_episode: int
    """Shots in each episode."""
    n_shots: int
    """Total rows (episodes * shots_per_episode)."""
    shard_size: int
    """Rows per shard (the last may be shorter)."""
    clip_frames: int
    """Frames per clip (0: no clips)."""
    faces_per_shot: int
    """Face photos per row (0: none)."""
    shards: list[dict] = field(default_factory=list)
    """Per shard: {"name", "rows", "first"} in order."""
    vocab: dict = field(default_factory=dict)
    """Label vocabularies: characters, scenes, cameras, positions, actions, expressions."""
    seconds: float = 0.0
    """Wall time the writer took."""

    @property
    def path_names(self) -> list[str]:
        """Shard base names, in order."""
        return [s["name"] for s in self.shards]


def _vocab(world: World) -> dict:
    return {
        "characters": [c.id for c in world.characters],
        "scenes": [s.id for s in world.scenes],
        "cameras": list(CAMERAS),
        "positions": list(POSITIONS),
        "actions": list(ACTIONS),
        "expressions": list(EXPRESSIONS),
    }


@dataclass(frozen=True)
class _Chunk:
    """Rows [first, first + rows) of the dataset, rendered by one worker call."""

    first: int
    rows: int
    world_seed: int
    seed: int
    size: int
    shots_per_episode: int
    clip_frames: int
    faces_per_shot: int


_EPISODE_CACHE: dict[tuple, Episode] = {}


def _episode(world: World, seed: int, e: int, n_shots: int) -> Episode:
    key = (world.seed, seed, e, n_shots)
    if key not in _EPISODE_CACHE:
        if len(_EPISODE_CACHE) > 64:
            _EPISODE_CACHE.clear()
        _EPISODE_CACHE[key] = make_episode(world, seed=episode_seed(seed, e), n_shots=n_shots)
    return _EPISODE_CACHE[key]


def _render_chunk(chunk: _Chunk) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Render a chunk of rows: the shard arrays for those rows and their texts."""
    world = make_world(chunk.world_seed)
    n, S = chunk.rows, chunk.size
    arrays: dict[str, np.ndarray] = {"frames": np.empty((n, S, S, 3), np.uint8)}  # [n, H, W, 3]
    for k in ("scene", "camera", "palette", "episode", "shot"):
        arrays[k] = np.empty(n, np.int64)
    for k in ("chars", "actions", "expressions", "trousers"):
        arrays[k] = np.empty((n, 3), np.int64)  # [n, 3] left, center, right
    if chunk.clip_frames:
        arrays["clips"] = np.empty((n, chunk.clip_frames, S, S, 3), np.uint8)  # [n, T, H, W, 3]
    if chunk.faces_per_shot:
        arrays["faces"] = np.empty((n, chunk.faces_per_shot, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        arrays["face_ids"] = np.empty((n, chunk.faces_per_shot), np.int64)
    texts = []
    for r in range(n):
        e, s = divmod(chunk.first + r, chunk.shots_per_episode)
        shot = _episode(world, chunk.seed, e, chunk.shots_per_episode).shots[s]
        shot_seed = [chunk.seed, chunk.world_seed, e, s]
        rng = np.random.default_rng(shot_seed)
        arrays["frames"][r] = render_keyframe(world, shot, S, rng)
        if chunk.clip_frames:  # the same rng state: clip frame 0 is the keyframe
            arrays["clips"][r] = render_clip(world, shot, S, chunk.clip_frames, np.random.default_rng(shot_seed))
        for k in range(chunk.faces_per_shot):  # identities drawn uniformly: balanced for embedders
            c = int(rng.integers(len(world.characters)))
            arrays["face_ids"][r, k] = c
            arrays["faces"][r, k] = render_face_photo(world, world.characters[c].id, rng)
        labels = shot_labels(world, shot)
        for k in ("scene", "camera", "chars", "actions", "expressions", "palette", "trousers"):
            arrays[k][r] = labels[k]
        arrays["episode"][r], arrays["shot"][r] = e, s
        identifier, descriptor = shot_text(world, shot)
        texts.append({"identifier": identifier, "descriptor": descriptor, "episode": e, "shot": s})
    return arrays, texts


def _save_shard(out: Path, index: int, parts: list[tuple[dict[str, np.ndarray], list[dict]]]) -> str:
    name = f"shard-{index:05d}"
    arrays = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    # uncompressed: fast to write and to read back
    atomic_write(out / f"{name}.npz", lambda f: np.savez(f, **arrays))
    (out / f"{name}.jsonl").write_text("".join(json.dumps(t) + "\n" for p in parts for t in p[1]))
    return name


def write_dataset(out_dir: str | Path, episodes: int, shots_per_episode: int, size: int, seed: int = 0,
                  shard_size: int = 1000, clip_frames: int = 0, faces_per_shot: int = 0, progress: bool = True,
                  world_seed: int = 0, workers: int | None = None, chunk_size: int = 100) -> DatasetInfo:
    """Render `episodes * shots_per_episode` shots into shards under `out_dir` (see the module doc).

    Rows are rendered in chunks of `chunk_size` by `workers` processes (default: up to 2, the
    cores this is tuned for); this process gathers them in order and writes each shard when it
    is complete, so memory holds about one shard plus the chunks in flight.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    if episodes < 1 or shots_per_episode < 1 or shard_size < 1 or chunk_size < 1:
        raise ValueError("episodes, shots_per_episode, shard_size and chunk_size must be >= 1")
    if clip_frames == 1 or clip_frames < 0 or faces_per_shot < 0:
        raise ValueError("clip_frames must be 0 or >= 2, faces_per_shot >= 0")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(world_seed)
    total = episodes * shots_per_episode
    shards = [(k, first, min(shard_size, total - first)) for k, first in enumerate(range(0, total, shard_size))]
    chunks = [
        (k, _Chunk(c, min(chunk_size, first + rows - c), world_seed, seed, size, shots_per_episode, clip_frames,
                   faces_per_shot))
        for k, first, rows in shards
        for c in range(first, first + rows, chunk_size)
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, len(chunks)))
    names = _run_chunks(out, chunks, workers, total, progress)
    info = DatasetInfo(
        format_version=DATASET_FORMAT_VERSION, world_seed=world_seed, seed=seed, size=size, episodes=episodes,
        shots_per_episode=shots_per_episode, n_shots=total, shard_size=shard_size, clip_frames=clip_frames,
        faces_per_shot=faces_per_shot,
        shards=[{"name": name, "rows": rows, "first": first} for name, (_, first, rows) in zip(names, shards,
                                                                                             strict=True)],
        vocab=_vocab(world), seconds=round(time.perf_counter() - start, 3),
    )
    (out / "dataset.json").write_text(json.dumps(asdict(info), indent=1))
    return info


def _run_chunks(out: Path, chunks: list[tuple[int, _Chunk]], workers: int, total: int, progress: bool) -> list[str]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]toyworld dataset"), BarColumn(), MofNCompleteColumn(), TextColumn("shots"),
               TimeElapsedColumn(), TimeRemainingColumn())
    names: list[str] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress(*columns, disable=not progress))
        task = bar.add_task("render", total=total)
        if workers == 1:
            results = map(_render_chunk, (c for _, c in chunks))
        else:
            # fork is fast and safe here (this process runs no threads of ours); spawn elsewhere.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            pool = stack.enter_context(mp.get_context(method).Pool(workers))
            results = pool.imap(_render_chunk, (c for _, c in chunks))  # in order
        last_chunk_of_shard = {k: i for i, (k, _) in enumerate(chunks)}  # later chunks overwrite earlier
        parts: list = []
        for i, ((k, chunk), result) in enumerate(zip(chunks, results, strict=True)):
            parts.append(result)
            bar.advance(task, chunk.rows)
            if last_chunk_of_shard[k] == i:
                names.append(_save_shard(out, k, parts))
                parts = []
    return names


def read_info(data_dir: str | Path) -> DatasetInfo:
    """Read dataset.json."""
    raw = json.loads((Path(data_dir) / "dataset.json").read_text())
    return DatasetInfo(**raw)


class ToyDataset(Dataset):
    """Map-style dataset over the shards of `write_dataset` (a torch.utils.data.Dataset).

    Item i is a dict: frame uint8 tensor [H, W, 3] (or float [3, H, W] in -1..1 with
    `channels_first=True`), scene, camera (int64 scalars), chars, actions, expressions (int64 [3]),
    episode, shot, identifier, descriptor (str), and clip [T, H, W, 3] / faces, face_ids when the
    dataset has them. Up to `cache_shards` shards are kept in memory (least recently used first out),
    so read in shard order (or use a sampler that does) when the dataset is bigger than memory.
    """

    def __init__(self, data_dir: str | Path, cache_shards: int = 4, channels_first: bool = False):
        self.dir = Path(data_dir)
        if not (self.dir / "dataset.json").exists():
            raise FileNotFoundError(f"{self.dir} has no dataset.json; write one with `mdream toyworld dataset`")
        self.info = read_info(self.dir)
        self.cache_shards = max(1, cache_shards)
        self.channels_first = channels_first
        self._firsts = np.array([s["first"] for s in self.info.shards], np.int64)
        self._cache: OrderedDict[int, tuple[dict[str, np.ndarray], list[dict]]] = OrderedDict()

    def __len__(self) -> int:
        return self.info.n_shots

    def _shard(self, k: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        name = self.info.shards[k]["name"]
        with np.load(self.dir / f"{name}.npz") as z:
            arrays = {key: z[key] for key in z.files}
        texts = [json.loads(line) for line in (self.dir / f"{name}.jsonl").read_text().splitlines()]
        self._cache[k] = (arrays, texts)
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return arrays, texts

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self._firsts, index, side="right") - 1)
        arrays, texts = self._shard(k)
        r = index - int(self._firsts[k])
        item: dict = {}
        frame = torch.from_numpy(arrays["frames"][r].copy())  # [H, W, 3] uint8
        if self.channels_first:
            frame = frame.permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W] in -1..1
        item["frame"] = frame
        for key in ("scene", "camera", "episode", "shot"):
            item[key] = torch.tensor(int(arrays[key][r]))
        for key in ("chars", "actions", "expressions"):
            item[key] = torch.from_numpy(arrays[key][r].copy())
        if "clips" in arrays:
            item["clip"] = torch.from_numpy(arrays["clips"][r].copy())  # [T, H, W, 3]
        if "faces" in arrays:
            item["faces"] = torch.from_numpy(arrays["faces"][r].copy())  # [F, 112, 112, 3]
            item["face_ids"] = torch.from_numpy(arrays["face_ids"][r].copy())  # [F]
        item["identifier"] = texts[r]["identifier"]
        item["descriptor"] = texts[r]["descriptor"]
        return item

    def shard_arrays(self, k: int) -> dict[str, np.ndarray]:
        """All arrays of shard k (numpy), for fast bulk loading."""
        return self._shard(k)[0]

    def load_all(self, keys: tuple[str, ...] = ("frames", "scene", "chars", "camera", "actions")
                 ) -> dict[str, np.ndarray]:
        """Concatenate `keys` over every shard into memory (for sets that fit: 10k 32 px frames are 30 MB)."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for k in range(len(self.info.shards)):
            name = self.info.shards[k]["name"]
            with np.load(self.dir / f"{name}.npz") as z:
                for key in keys:
                    parts[key].append(z[key])
        return {key: np.concatenate(v) for key, v in parts.items()}

    def texts(self) -> list[dict]:
        """All rows' texts ({"identifier", "descriptor", "episode", "shot"}), in row order."""
        rows: list[dict] = []
        for shard in self.info.shards:
            lines = (self.dir / f"{shard['name']}.jsonl").read_text().splitlines()
            rows.extend(json.loads(line) for line in lines)
        return rows


class ShardShuffleSampler(Sampler[int]):
    """Random order that visits one shard at a time (shards shuffled, rows shuffled within each).

    With it a ToyDataset reads each shard once per epoch instead of thrashing its shard cache.
    Call `set_epoch(e)` for a new order each epoch.
    """

    def __init__(self, dataset: ToyDataset, seed: int = 0):
        self.shards = [(s["first"], s["rows"]) for s in dataset.info.shards]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(rows for _, rows in self.shards)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for k in rng.permutation(len(self.shards)):
            first, rows = self.shards[int(k)]
            yield from (first + int(r) for r in rng.permutation(rows))

