"""Training sets of toy-world shots, streamed to disk in shards, and a map-style torch reader.

Layout of a dataset folder:
    dataset.json          world seed, sizes, counts, vocabularies, the shard list
    shard-00000.npz       frames uint8 [n, H, W, 3], scene [n], chars [n, 3], camera [n],
                          actions [n, 3], expressions [n, 3], episode [n], shot [n];
                          optional clips uint8 [n, T, H, W, 3]; optional faces uint8 [n, F, 112, 112, 3]
                          with face_ids [n, F] (world character indices, drawn uniformly)
    shard-00000.jsonl     one {"identifier", "descriptor", "episode", "shot"} per row

Shot g (counted over all episodes) lives in shard g // shard_size. Every shot's pixels depend only
on (seed, world seed, episode, shot), so shards can be written by any number of processes in
any order and the result is the same.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mdream.toyworld.episode import Episode, make_episode, shot_labels, shot_text
from mdream.toyworld.render import FACE_SIZE, SIZES, render_clip, render_face_photo, render_keyframe
from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS, POSITIONS, World, make_world

DATASET_FORMAT_VERSION = 1


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
class _ShardJob:
    out_dir: str
    index: int
    first: int            # global row of the shard's first shot
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
        _EPISODE_CACHE[key] = make_episode(world, seed=seed * 1_000_003 + e, n_shots=n_shots)
    return _EPISODE_CACHE[key]


def _write_shard(job: _ShardJob, counter=None) -> str:
    """Render and save one shard; returns its base name. `counter` (a shared int) counts rows done."""
    world = make_world(job.world_seed)
    n, S = job.rows, job.size
    frames = np.empty((n, S, S, 3), np.uint8)          # [n, H, W, 3]
    arrays = {k: np.empty(n, np.int64) for k in ("scene", "camera", "episode", "shot")}
    for k in ("chars", "actions", "expressions"):
        arrays[k] = np.empty((n, 3), np.int64)          # [n, 3] left, center, right
    clips = np.empty((n, job.clip_frames, S, S, 3), np.uint8) if job.clip_frames else None
    faces = np.empty((n, job.faces_per_shot, FACE_SIZE, FACE_SIZE, 3), np.uint8) if job.faces_per_shot else None
    face_ids = np.empty((n, job.faces_per_shot), np.int64) if job.faces_per_shot else None
    texts = []
    pending = 0
    for r in range(n):
        g = job.first + r
        e, s = divmod(g, job.shots_per_episode)
        shot = _episode(world, job.seed, e, job.shots_per_episode).shots[s]
        rng = np.random.default_rng([job.seed, job.world_seed, e, s])
        frames[r] = render_keyframe(world, shot, S, rng)
        if clips is not None:
            clips[r] = render_clip(world, shot, S, job.clip_frames, rng)
        if faces is not None:
            for k in range(job.faces_per_shot):
                c = int(rng.integers(len(world.characters)))
                face_ids[r, k] = c
                faces[r, k] = render_face_photo(world, world.characters[c].id, rng)
        labels = shot_labels(world, shot)
        for k in ("scene", "camera"):
            arrays[k][r] = labels[k]
        for k in ("chars", "actions", "expressions"):
            arrays[k][r] = labels[k]
        arrays["episode"][r], arrays["shot"][r] = e, s
        identifier, descriptor = shot_text(world, shot)
        texts.append({"identifier": identifier, "descriptor": descriptor, "episode": e, "shot": s})
        pending += 1
        if counter is not None and pending >= 25:
            with counter.get_lock():
                counter.value += pending
            pending = 0
    name = f"shard-{job.index:05d}"
    out = Path(job.out_dir)
    payload = {"frames": frames, **arrays}
    if clips is not None:
        payload["clips"] = clips
    if faces is not None:
        payload["faces"], payload["face_ids"] = faces, face_ids
    tmp = out / f".{name}.tmp.npz"
    np.savez(tmp, **payload)  # uncompressed: fast to write and to read back
    os.replace(tmp, out / f"{name}.npz")
    (out / f"{name}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    if counter is not None and pending:
        with counter.get_lock():
            counter.value += pending
    return name


_WORKER_COUNTER = None


def _init_worker(counter) -> None:
    global _WORKER_COUNTER
    _WORKER_COUNTER = counter


def _worker(job: _ShardJob) -> str:
    return _write_shard(job, _WORKER_COUNTER)


def write_dataset(out_dir: str | Path, episodes: int, shots_per_episode: int, size: int, seed: int = 0,
                  shard_size: int = 1000, clip_frames: int = 0, faces_per_shot: int = 0, progress: bool = True,
                  world_seed: int = 0, workers: int | None = None) -> DatasetInfo:
    """Render `episodes * shots_per_episode` shots into shards under `out_dir` (see the module doc).

    Shards are rendered by `workers` processes (default: up to 2, the cores this is tuned for);
    nothing bigger than one shard per process is ever in memory.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    if episodes < 1 or shots_per_episode < 1 or shard_size < 1:
        raise ValueError("episodes, shots_per_episode and shard_size must be >= 1")
    if clip_frames == 1 or clip_frames < 0 or faces_per_shot < 0:
        raise ValueError("clip_frames must be 0 or >= 2, faces_per_shot >= 0")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(world_seed)
    total = episodes * shots_per_episode
    jobs = [
        _ShardJob(str(out), k, first, min(shard_size, total - first), world_seed, seed, size, shots_per_episode,
                  clip_frames, faces_per_shot)
        for k, first in enumerate(range(0, total, shard_size))
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(jobs))
    workers = max(1, min(workers, len(jobs)))
    names = _run_jobs(jobs, workers, total, progress)
    info = DatasetInfo(
        format_version=DATASET_FORMAT_VERSION, world_seed=world_seed, seed=seed, size=size, episodes=episodes,
        shots_per_episode=shots_per_episode, n_shots=total, shard_size=shard_size, clip_frames=clip_frames,
        faces_per_shot=faces_per_shot,
        shards=[{"name": name, "rows": j.rows, "first": j.first} for name, j in zip(names, jobs, strict=True)],
        vocab=_vocab(world), seconds=round(time.perf_counter() - start, 3),
    )
    (out / "dataset.json").write_text(json.dumps(asdict(info), indent=1))
    return info


def _run_jobs(jobs: list[_ShardJob], workers: int, total: int, progress: bool) -> list[str]:
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
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("render", total=total)
        if workers == 1:
            names = []
            for job in jobs:
                names.append(_write_shard(job))
                bar.advance(task, job.rows)
            return names
        # fork is fast and safe here (no threads of ours yet); spawn elsewhere.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        counter = ctx.Value("q", 0)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
            result = pool.map_async(_worker, jobs, chunksize=1)
            while not result.ready():
                result.wait(0.2)
                bar.update(task, completed=counter.value)
            names = result.get()
        bar.update(task, completed=total)
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

