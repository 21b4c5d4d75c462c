"""Ablations of the keyframe AR model: movies of held-out toy scripts from several AR models side by side.

    python -m benchmarks.bench_ar_ablations --train-data runs/ar/data/train \\
        --ar "recipe=runs/ar/final" \\
        --ar "no face embeddings=runs/ar-nofaces/final" \\
        --ar "no anti-overfitting set=runs/ar-noreg/final" \\
        --ar "diffusion head=runs/ar-diff/final"

The rows are trained with `mdream train ar --config ar-toy-cpu` and one change each: ``--no-faces`` (no face
embeddings in the sequence), ``--no-face-randomisation --dropout 0 --token-mask-prob 0`` (none of the
anti-overfitting set), ``--head diffusion``. ``--ar NAME=FOLDER`` takes a keyframe AR model folder (``RUN/final``,
``RUN/checkpoints/step-N/keyframe_ar``, or a folder holding ``keyframe_ar/``); the names become the table's rows, in
the given order.

For each episode seed (defaults: the held-out seeds of `benchmarks.bench_continuity`, far beyond the training
episodes) the toy script of ``--shots`` shots (world 0, ``--size`` px) is written once and its ground-truth movie
scored; each model then makes the script's movie with `generate` (the toy bundle with that AR model,
`bench_ar_quality.bundle_with_ar`; temperature 1; keyframes, render and export only, never the video stage; its own
cache) and is scored by `mdream eval`'s toy backend. Columns: scene, cast and identity accuracy and diversity (the
evaluator's, averaged over the seeds), continuity of the hidden palette and trousers (pooled over the seeds,
`bench_continuity.pooled`), and with ``--train-data`` (an AR run's ``RUN/data/train``, the encoded training
episodes):

* **copies of training keyframes**: the share of a movie's keyframes whose tokens' nearest training keyframe (L2
  over the flattened ``[N, d]`` tokens) is nearer than the 5th percentile of the same distance for the held-out
  ground-truth keyframes. The ground truth's tokens are made as the training set's were: each held-out shot
  rendered at the set's frame size (the same render as the script's ground truth, `write_groundtruth`) and encoded
  by the set's keyframe encoder (the frame size matters: the toy world repeats itself, and at the training set's
  32 px the nearest held-out frames almost coincide with training frames, 5th percentile 0.5 against 1.8 for the
  script's 64 px frames encoded, for seed 900001 against the recipe's 500 episodes). Its
  row is 0.05 by construction (the threshold is its own 5th percentile; up to one keyframe of the count, e.g.
  2/24 for one 24-shot script, 12/240 for three of 80); a model that reproduces training keyframes scores well
  above it. A generated keyframe's tokens are the AR model's prediction as the keyframes stage cached it (what the
  decoder renders), pooled over the seeds like the ground truth's.
* **mean nearest-training distance** of the movie's keyframe tokens.

Without ``--train-data`` those columns are "-". The last column is the training run's own held-out teacher-forced
token cosine (its records: ``training_summary.json`` / ``state.json``; the trainer's held-out windows at its
``eval_temperature``; comparable between runs of one data recipe), where the folder has them. The prose above the
table lists each model's training settings that differ from the first model's (its ``train_config.json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TITLE = "Keyframe AR model (toy): ablations"
SEEDS = (900_001, 900_002, 900_003)
COPY_QUANTILE = 0.05
#: Training settings that say nothing about the model (left out of the list of what a row changed).
BOOKKEEPING = {"checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "eval_windows", "max_minutes",
               "mixed_precision"}


# ---- arguments -------------------------------------------------------------------------------------------


def model_folder(path: Path) -> Path:
    """The keyframe AR model folder at ``path``: the folder itself (``keyframe_ar.json`` in it) or its
    ``keyframe_ar/`` (a checkpoint or export folder)."""
    for folder in (path, path / "keyframe_ar"):
        if (folder / "keyframe_ar.json").is_file():
            return folder
    raise ValueError(f"{path} holds no keyframe AR model (no keyframe_ar.json in it or in its keyframe_ar/)")


def parse_model(spec: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` -> (name, the keyframe AR model folder); an argparse ``type`` (bad specs: a parser error)."""
    name, sep, folder = spec.partition("=")
    name, folder = name.strip(), folder.strip()
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{spec!r} is not NAME=FOLDER (e.g. \"no face embeddings=runs/ar-nofaces/final\")")
    try:
        return name, model_folder(Path(folder).expanduser())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ar", type=parse_model, action="append", default=[], metavar="NAME=FOLDER", required=True,
                        help="A keyframe AR model folder and its row's name; repeatable (rows in this order).")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="Episode seeds of the scripts.")
    parser.add_argument("--shots", type=int, default=80, help="Shots per script (60+ so that 20+ gaps exist).")
    parser.add_argument("--size", type=int, default=64, help="Frame size of the scripts and movies (32, 64 or 128).")
    parser.add_argument("--train-data", type=Path, default=None,
                        help="An AR run's encoded training episodes (RUN/data/train): the copy columns.")
    parser.add_argument("--device", default="cpu", help="Device of `generate`.")
    parser.add_argument("--out", type=Path, default=None, help="Keep scripts, movies and caches here (default: temp).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows and every report here.")
    parser.add_argument("--no-write", action="store_true", help="Print the table; leave benchmarks/RESULTS.md alone.")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.ar]
    if len(set(names)) != len(names) or "ground truth" in names:
        parser.error(f"--ar names must differ from each other and from 'ground truth': {names}")
    if args.shots < 1:
        parser.error("--shots must be >= 1")
    if args.train_data is not None and not (args.train_data / "index.json").is_file():
        parser.error(f"--train-data {args.train_data}: no index.json (pass an AR run's data/train folder)")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out}: the folder is not empty")
    return args


# ---- copies of training keyframes (pure) -----------------------------------------------------------------


def nearest_distances(queries: torch.Tensor, train: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """L2 distance of each query to its nearest training row, over the flattened tokens.

    queries ``[Q, N, d]`` (or ``[Q, N*d]``), train ``[M, N, d]`` -> ``[Q]``; the training rows are compared
    ``chunk`` at a time, so memory stays at ``Q x chunk`` distances.
    """
    q = queries.reshape(len(queries), -1).double()  # [Q, N*d]
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    for start in range(0, len(train), chunk):
        rows = train[start : start + chunk].reshape(-1, q.shape[1]).double()  # [c, N*d]
        # exact differences (no matrix-product shortcut): a copied row is at distance 0, not at rounding noise
        d = torch.cdist(q, rows, compute_mode="donot_use_mm_for_euclid_dist")  # [Q, c]
        best = torch.minimum(best, d.min(dim=1).values)
    return best


def copy_threshold(reference: torch.Tensor, quantile: float = COPY_QUANTILE) -> float:
    """The ``quantile`` of the held-out ground truth's nearest-training distances ``[R]``."""
    return float(torch.quantile(reference.double(), quantile))


def copy_fraction(distances: torch.Tensor, threshold: float) -> float:
    """Share of keyframes ``[Q]`` nearer their nearest training keyframe than ``threshold``."""
    return float((distances < threshold).double().mean()) if len(distances) else float("nan")


# ---- tokens ----------------------------------------------------------------------------------------------


def training_tokens(folder: Path) -> tuple[torch.Tensor, dict]:
    """The tokens ``[M, N, d]`` of an AR run's encoded training set (only that tensor of each shard) and how the
    set was made (``info`` of its index.json)."""
    from safetensors import safe_open

    index = json.loads((folder / "index.json").read_text())
    parts = []
    for shard in index["shards"]:
        with safe_open(str(folder / shard["file"]), "pt") as f:
            parts.append(f.get_tensor("tokens").float())
    return torch.cat(parts), dict(index.get("info", {}))


def predicted_tokens(script: Path, cache: Path) -> torch.Tensor:
    """Every shot's keyframe tokens ``[S, N, d]`` as the keyframes stage cached them for ``script``."""
    from mdream.stages.options import RunOptions
    from mdream.stages.pipeline import Project, plan_keys
    from mdream.stages.registry import new_stages

    project = Project.open(script, RunOptions(cache_dir=cache, quiet=True))
    keys = plan_keys(project, new_stages("keyframes"))["keyframes"]
    return torch.stack([project.store.open("keyframes", k).load_tensors("tokens")["tokens"] for k in keys])


def truth_tokens(folder: Path, seed: int, shots: int, info: dict, encoder) -> torch.Tensor:
    """The held-out episode's ground-truth keyframes made as the training set's were (rendered at its frame size
    by `write_groundtruth`, encoded by its keyframe encoder): ``[S, N, d]``."""
    from PIL import Image

    from mdream.toyworld import make_world
    from mdream.toyworld.episode import make_episode
    from mdream.toyworld.script_writer import write_groundtruth

    world = make_world(int(info.get("world_seed", 0)))
    movie = write_groundtruth(world, make_episode(world, seed=seed, n_shots=shots), folder,
                              int(info["frame_size"]), seed)
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((movie / "keyframes").glob("*.png"))])
    return encoder.encode(frames, batch_size=256)  # [S, N, d]


def load_encoder(info: dict):
    """The training set's keyframe encoder (the shipped toy encoder where its path is not on this machine)."""
    from mdream.models.encoders import KeyframeEncoder
    from mdream.models.loading import quiet_loading
    from mdream.training.ar_data import TOY_KEYFRAME_ENCODER

    path = Path(info.get("keyframe_encoder", TOY_KEYFRAME_ENCODER))
    if not path.is_dir():
        print(f"note: the training set's keyframe encoder {path} is not here; encoding with {TOY_KEYFRAME_ENCODER}")
        path = TOY_KEYFRAME_ENCODER
    with quiet_loading():
        return KeyframeEncoder.from_pretrained(path).eval()


# ---- what each run was -----------------------------------------------------------------------------------


def _first_file(folder: Path, name: str, up: int) -> Path | None:
    for parent in [folder, *list(folder.parents)[:up]]:
        if (parent / name).is_file():
            return parent / name
    return None


def run_records(folder: Path) -> dict:
    """The training run's last held-out numbers for this model folder ({} where none are found)."""
    path = _first_file(folder, "training_summary.json", 0) or _first_file(folder, "state.json", 1)
    return json.loads(path.read_text()) if path is not None else {}


def config_changes(folders: dict[str, Path]) -> dict[str, str]:
    """Per model: its training settings that differ from the first model's ("" where none differ or none found)."""
    configs = {}
    for name, folder in folders.items():
        path = _first_file(folder, "train_config.json", 3)
        configs[name] = json.loads(path.read_text()) if path is not None else None
    first = next(iter(configs.values()))
    out = {}
    for name, config in configs.items():
        if config is None or first is None:
            out[name] = ""
            continue
        # a setting this run's trainer did not record (an older trainer) is left out, not shown as None
        keys = sorted(set(config) - BOOKKEEPING)
        out[name] = ", ".join(f"{k}: {config[k]}" for k in keys if config[k] != first.get(k))
    return out


#: A training config's data settings and the training set's ``info`` names for them.
DATA_SETTINGS = {"world_seed": "world_seed", "data_seed": "seed", "episodes": "episodes", "episode_length": "length",
                 "frame_size": "frame_size"}


def other_training_data(folder: Path, info: dict) -> str:
    """The data settings in which this model's training run differs from the ``--train-data`` set ("" where none
    differ or the run's config is not found): its copies are then measured against a set it was not trained on."""
    path = _first_file(folder, "train_config.json", 3)
    if path is None:
        return ""
    config = json.loads(path.read_text())
    return ", ".join(f"{k}: {config[k]} (set: {info[v]})" for k, v in DATA_SETTINGS.items()
                     if k in config and v in info and config[k] != info[v])


# ---- the table -------------------------------------------------------------------------------------------


def mean_of(reports, key: str) -> float | None:
    values = [getattr(r, key) for r in reports if getattr(r, key) is not None]
    return float(np.mean(values)) if values else None


def row(reports, distances: torch.Tensor | None, threshold: float | None, records: dict | None) -> dict:
    from benchmarks.bench_continuity import pooled

    out = {key: mean_of(reports, key) for key in ("scene_accuracy", "cast_accuracy", "identity_accuracy", "diversity")}
    out["continuity"] = pooled(reports)
    out["copy_fraction"] = copy_fraction(distances, threshold) if distances is not None else None
    out["mean_nearest_training_distance"] = float(distances.mean()) if distances is not None else None
    out["held_out_token_cos"] = (records or {}).get("token_cos")
    out["held_out_token_l2"] = (records or {}).get("token_l2")
    out["trained_steps"] = (records or {}).get("step", (records or {}).get("steps"))
    return out


COLUMNS = (
    ("scene_accuracy", "scene acc."), ("cast_accuracy", "cast acc."), ("identity_accuracy", "identity acc."),
    ("palette_short_term", "palette short"), ("palette_long_term", "palette long"),
    ("trousers_short_term", "trousers short"), ("trousers_long_term", "trousers long"),
    ("diversity", "diversity"), ("copy_fraction", "copies of training keyframes"),
    ("mean_nearest_training_distance", "mean nearest-training distance"),
    ("held_out_token_cos", "held-out token cos (teacher-forced)"),
)


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| movie | " + " | ".join(label for _, label in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, r in rows.items():
        cells = []
        for key, _ in COLUMNS:
            value = r["continuity"][key]["agreement"] if key in r["continuity"] else r[key]
            digits = 2 if key == "mean_nearest_training_distance" else 3
            cells.append("-" if value is None else f"{value:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------------------


def generate_movie(script: Path, ar: Path, work: Path, device: str) -> tuple[Path, Path, Path]:
    """The script's movie by the toy bundle with ``ar`` at temperature 1, keyframes + render + export only.
    Returns (movie folder, the script variant it was made from, its cache)."""
    from benchmarks.bench_ar_quality import bundle_with_ar, keyframe_movie

    bundle = bundle_with_ar(work / "bundle", ar)
    folder, variant = keyframe_movie(script, 1.0, work.name, work / "movie.mp4", work / "cache", device, bundle=bundle)
    return folder, variant, work / "cache"


def main(argv: list[str] | None = None) -> None:
    from mdream.eval.evaluate import evaluate_movie
    from mdream.toyworld.commands import toy_script

    args = parse_args(argv)
    t0 = time.perf_counter()
    folders = dict(args.ar)
    train = info = encoder = None
    notes: list[str] = []
    if args.train_data is not None:
        train, info = training_tokens(args.train_data)
        info.setdefault("frame_size", args.size)
        encoder = load_encoder(info)
        for name, folder in folders.items():
            cfg = json.loads((folder / "keyframe_ar.json").read_text())
            if (cfg.get("num_tokens"), cfg.get("token_dim")) != tuple(train.shape[1:]):
                raise SystemExit(f"{name}: the model predicts {cfg.get('num_tokens')} tokens of {cfg.get('token_dim')}, "
                                 f"the training set holds {tuple(train.shape[1:])}")
        for name, folder in folders.items():
            if other := other_training_data(folder, info):
                notes.append(f"{name} was trained on other data than `--train-data` ({other}): its copy columns "
                             "compare it with a set it did not see.")
                print(f"note: {notes[-1]}", flush=True)
        print(f"training set: {len(train)} keyframes of tokens {tuple(train.shape[1:])} "
              f"(frame size {info['frame_size']})", flush=True)
    names = ["ground truth", *folders]
    reports: dict[str, list] = {n: [] for n in names}
    distances: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    seconds: dict[str, float] = dict.fromkeys(folders, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for seed in args.seeds:
            work = root / f"seed-{seed}"
            script = toy_script(work / "script", seed=seed, shots=args.shots, size=args.size)
            reports["ground truth"].append(evaluate_movie(script.parent / "groundtruth", script))
            if train is not None:
                truth = truth_tokens(work / f"truth-{info['frame_size']}px", seed, args.shots, info, encoder)
                distances["ground truth"].append(nearest_distances(truth, train))
            print(f"seed {seed}: ground truth scored", flush=True)
            for i, (name, folder) in enumerate(folders.items()):
                start = time.perf_counter()
                movie, variant, cache = generate_movie(script, folder, work / f"model-{i}", args.device)
                seconds[name] += time.perf_counter() - start
                reports[name].append(evaluate_movie(movie, variant))
                if train is not None:
                    distances[name].append(nearest_distances(predicted_tokens(variant, cache), train))
                print(f"seed {seed}: {name}: generated and scored ({time.perf_counter() - start:.0f} s)", flush=True)
    pooled_distances = {n: torch.cat(d) if d else None for n, d in distances.items()}
    threshold = copy_threshold(pooled_distances["ground truth"]) if train is not None else None
    records = {n: run_records(f) for n, f in folders.items()}
    rows = {n: row(reports[n], pooled_distances[n], threshold, records.get(n)) for n in names}
    changes = config_changes(folders)
    total = time.perf_counter() - t0

    described = "; ".join(f"**{n}**: `{folders[n]}`" + (f" ({changes[n]})" if changes[n] else "")
                          for n in folders)
    copies = (f"Copies of training keyframes: keyframes whose tokens' nearest training keyframe (of {len(train)} in "
              f"`{args.train_data}`) is nearer than {threshold:.2f}, the 5th percentile of that distance for the "
              "held-out ground truth (rendered at the training frame size and encoded as the training set was), so "
              "the ground-truth row is 0.05 by construction; a generated keyframe's tokens are the AR model's "
              "prediction. " if train is not None else "Without `--train-data`, no copy columns. ")
    body = (
        f"Rows: the ground truth, then each keyframe AR model ({described}); settings in brackets differ from the "
        f"first model's training settings. {len(args.seeds)} held-out toy scripts of {args.shots} shots at "
        f"{args.size}x{args.size} (episode seeds {', '.join(map(str, args.seeds))}); every movie made by `generate` "
        "with the toy bundle and that AR model at temperature 1 (keyframes, render, export), scored by `mdream eval`'s "
        "toy backend. Accuracies and diversity: the mean over the scripts; palette and trousers continuity: "
        f"agreement pooled over the scripts (short: a scene's next shot / a character's next appearance; long: 20+ "
        f"shots apart). {copies}Held-out token cos: the training run's own teacher-forced measurement "
        f"(its last records). Generation: {'; '.join(f'{n}: {s:.0f} s' for n, s in seconds.items())}; "
        f"{total:.0f} s in all." + "".join(f" Note: {n}" for n in notes) + "\n\n" + markdown(rows)
    )
    print(body)
    if args.json:
        args.json.write_text(json.dumps(
            {"rows": rows, "threshold": threshold, "models": {n: str(f) for n, f in folders.items()},
             "reports": {n: [r.to_dict() for r in rs] for n, rs in reports.items()}}, indent=1) + "\n")
    if not args.no_write:
        from benchmarks.results import update_section

        command = ("python -m benchmarks.bench_ar_ablations " + " ".join(f'--ar "{n}={f}"' for n, f in folders.items())
                   + f" --seeds {' '.join(map(str, args.seeds))} --shots {args.shots} --size {args.size}"
                   + (f" --train-data {args.train_data}" if args.train_data is not None else ""))
        update_section(TITLE, body, command)


if __name__ == "__main__":
    main()
