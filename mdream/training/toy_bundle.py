"""``mdream train bundle``: train every toy model from scratch, in dependency order, into one model bundle.

    mdream train bundle --out runs/toy-bundle                    # reproduce mdream/assets (about 8.2 h on 2 cores)
    mdream train bundle --out runs/toy-bundle --dest DIR         # the same models in another folder
    mdream train bundle --out runs/smoke --dest DIR --smoke      # the same orchestration with tiny budgets

Each step trains one component with its packaged recipe (its seeds are the recipe's), in its own run folder
``OUT/<step>/``, and exports the result into the staged assets tree ``OUT/bundle/`` (the layout of
``mdream/assets``: ``models/toy-clip``, ``eval/toy_face_recognition.onnx``, ...; plus the from-scratch tokenizer
``models/toy-tokenizer-base``, which only the fine-tuning reads). Every later step reads the *staged* models, never
the shipped ones:

================  ======================  ==================================================================
step              trains                  reads
================  ======================  ==================================================================
clip              toy CLIP                (toy-world renders)
face_embedder     the face embedder ONNX  (toy-world renders)
tokenizer         keyframe encoder +      --clip: the staged CLIP, --face-embedder: the staged ONNX; staged as
                  decoder, from scratch   ``models/toy-tokenizer-base`` (not written into DEST)
tokenizer_hidden  the same, fine-tuned    --init: the staged ``toy-tokenizer-base``, --clip, --face-embedder:
                  for the hidden state    the staged CLIP and ONNX (recipe ``tokenizer-toy-hidden``)
ar                keyframe AR model       --keyframe-encoder: the fine-tuned tokenizer's encoder,
                                          --text-encoder: the staged CLIP, --face-embedder: the staged ONNX
analyser          the evaluator's frame   (toy-world renders; independent)
                  analyser
motion_reader     the evaluator's motion  (toy-world clips; independent)
                  reader
video             the toy video model     --image-encoder: the staged CLIP (its vision tower, frozen)
                  with the action map
================  ======================  ==================================================================

Resumable: ``OUT/manifest.json`` records each finished step (its settings, seeds, inputs, output, and its minutes
summed over every attempt: ``OUT/<step>/bundle-minutes.json`` keeps the running total); a step recorded as done whose staged output exists is skipped, and an unfinished one resumes from its newest
checkpoint (``--resume auto`` of its trainer); a step whose inputs were retrained in this call, or that was
finished or begun under another recipe or trainer than the plan's (``OUT/<step>/bundle-step.json``), starts over. Finally every model is written from ``OUT/bundle`` into DEST
(default: the package's ``mdream/assets``) through the same export code as ``mdream train export`` (and the
evaluator's ``--install``), with the weights stored as float16 safetensors (``fp16``; they load back into
float32). A DEST other than the package's assets also gets ``bundles/toy/bundle.yaml``, so it is a model bundle
(``model_bundle: DEST/bundles/toy``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdream.cache import atomic_write_bytes
from mdream.errors import InputError
from mdream.training.common import console

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MANIFEST = "manifest.json"
STEP_CLOCK = "bundle-minutes.json"
"""In each step's run folder: the wall-clock minutes of the step so far, over all its attempts."""
STEP_PLAN = "bundle-step.json"
"""In each step's run folder: the recipe and trainer its checkpoints are trained under."""
STAGED = "bundle"
TOY_BUNDLE_YAML = ASSETS / "bundles" / "toy" / "bundle.yaml"


@dataclasses.dataclass(frozen=True)
class BundleStep:
    """One component of the toy bundle and how it is made."""

    name: str
    trainer: str
    """The ``mdream train`` command."""
    recipe: str | None
    """The packaged recipe (None: the trainer's defaults are the recipe)."""
    output: str
    """Where the component lives in an assets tree (``models/toy-clip``)."""
    expected_minutes: float
    """Training time of the full recipe on the 2-core machine (benchmarks/RESULTS.md, the recipes' budgets)."""
    smoke: dict[str, Any]
    """Settings of ``--smoke``: a few steps on a little data."""
    needs: tuple[str, ...] = ()
    """The steps whose outputs it reads."""
    export_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Options of its export (``export_model``)."""
    ships: bool = True
    """False: an intermediate model that a later step starts from; staged, but not written into DEST."""
    pinned: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Settings over the recipe's that make the step train what shipped whatever the machine's speed: the shipped
    run's step count and no time budget (a recipe's ``max_minutes`` trains more steps on a faster machine)."""


#: The sampling the toy decoder is shipped with (the settings its eval.json was measured at); a freshly trained
#: tokenizer has no eval.json, so its export is told them.
TOY_DECODER_SAMPLING = {"num_inference_steps": 20, "guidance_scale": 1.0, "identity_guidance_scale": 0.0,
                        "scheduler": "ddim"}


_TOKENIZER_SMOKE = {"num_frames": 32, "steps": 2, "max_minutes": 0.0, "batch_size": 4, "warmup": 1,
                    "photos_per_character": 1, "checkpoint_every": 2, "log_every": 1}

_VIDEO_SMOKE = {"clips": 4, "clip_length": 4, "steps": 2, "max_minutes": 0.0, "batch_size": 2, "warmup": 1,
                "checkpoint_every": 2, "log_every": 1}

STEPS: tuple[BundleStep, ...] = (
    BundleStep("clip", "clip", "clip-toy", "models/toy-clip", 24.0,
               {"num_frames": 48, "val_frames": 16, "steps": 2, "batch_size": 8, "warmup": 1, "checkpoint_every": 2,
                "eval_every": 0, "log_every": 1}),
    BundleStep("face_embedder", "face-embedder", None, "eval/toy_face_recognition.onnx", 34.0,
               {"steps": 2, "batch_size": 8, "warmup": 1, "photo_pool": 8, "photo_refresh": 1, "world_seeds": "0",
                "checkpoint_every": 2, "log_every": 1}),
    # 17,347 steps: where the recipe's 120-minute budget ended on 2 cores (benchmarks/RESULTS.md, training cost)
    BundleStep("tokenizer", "tokenizer", "tokenizer-toy-cpu", "models/toy-tokenizer-base", 120.0, _TOKENIZER_SMOKE,
               needs=("clip", "face_embedder"), export_options=TOY_DECODER_SAMPLING, ships=False,
               pinned={"steps": 17347, "max_minutes": 0.0}),
    BundleStep("tokenizer_hidden", "tokenizer", "tokenizer-toy-hidden", "models/toy-tokenizer", 40.0, _TOKENIZER_SMOKE,
               needs=("clip", "face_embedder", "tokenizer"), export_options=TOY_DECODER_SAMPLING,
               pinned={"steps": 2622, "max_minutes": 0.0}),
    BundleStep("ar", "ar", "ar-toy-cpu", "models/toy-ar", 116.0,
               {"episodes": 2, "episode_length": 6, "val_episodes": 1, "photos_per_character": 1, "window": 3,
                "hidden_size": 32, "num_layers": 1, "num_heads": 2, "gmm_components": 2, "steps": 2,
                "max_minutes": 0.0, "batch_size": 2, "warmup": 1, "checkpoint_every": 2, "eval_every": 0,
                "eval_windows": 2, "log_every": 1}, needs=("clip", "face_embedder", "tokenizer_hidden"),
               pinned={"steps": 2995, "max_minutes": 0.0}),
    BundleStep("analyser", "analyser", "analyser-toy", "eval/frame_analyser", 30.0,
               {"pool_size": 16, "refresh_per_step": 1, "val_frames": 8, "steps": 2, "batch_size": 8, "warmup": 1,
                "checkpoint_every": 2, "log_every": 1}),
    BundleStep("motion_reader", "motion-reader", "motion-reader-toy", "eval/motion_reader", 10.0,
               {"pool_size": 16, "refresh_per_step": 1, "val_clips": 8, "clip_lengths": "8,12", "steps": 2,
                "batch_size": 8, "warmup": 1, "checkpoint_every": 2, "log_every": 1}, pinned={"max_minutes": 0.0}),
    BundleStep("video", "video", "video-toy-action-map", "models/toy-video", 115.0, _VIDEO_SMOKE, needs=("clip",),
               pinned={"max_minutes": 0.0}),
)
"""The steps in dependency order (each reads only the outputs of the steps above it)."""

EXPECTED_NOTE = ("the shipped runs' training times on the 2-core machine (benchmarks/RESULTS.md, training cost), each "
                 "step pinned to the shipped run's step count: clip 24 min (600 steps), face embedder 34 min, tokenizer "
                 "120 min (17,347 steps, 2 threads alone), its fine-tuning for the hidden state 40 min (2,622 steps, "
                 "one core shared), keyframe AR 110 min (2,995 steps, one thread beside other jobs) + 6 min to encode "
                 "its episodes, analyser 30 min, motion reader 10 min (8 min 17 s measured + 1.5 min rendering its "
                 "pool), video 115 min (3,900 steps, one thread beside another training): 489 min (8 h 9 min); rendering "
                 "the training frames and clips and "
                 "caching features adds minutes to some steps (about 3.5 min to each tokenizer step's 30,000 frames)")


@dataclasses.dataclass
class StepReport:
    name: str
    status: str
    """``trained``, ``skipped`` (finished earlier), ``not available`` (no such trainer yet) or ``failed``."""
    minutes: float = 0.0
    note: str = ""


@dataclasses.dataclass
class BundleReport:
    out: Path
    dest: Path | None
    manifest: Path
    steps: list[StepReport]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "dest": str(self.dest) if self.dest else None, "manifest": str(self.manifest),
                "steps": [dataclasses.asdict(s) for s in self.steps]}


class StepClock:
    """Wall-clock minutes one step has taken, summed over every process that worked on it.

    The running total is written to ``path`` every ``every`` seconds and at the end, so a step that was killed and
    resumed reports the time of all its attempts (a kill loses at most ``every`` seconds); ``fresh`` starts at 0.
    """

    def __init__(self, path: Path, fresh: bool, every: float = 30.0):
        self.path, self.every = path, every
        prior: Any = {}
        if not fresh and path.is_file():
            try:
                prior = json.loads(path.read_text())
            except (OSError, ValueError):
                prior = {}
        prior = prior if isinstance(prior, dict) else {}
        self.before = float(prior.get("minutes", 0.0))
        self.attempts = int(prior.get("attempts", 0)) + 1
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def minutes(self) -> float:
        return self.before + (time.perf_counter() - self.start) / 60

    def _write(self) -> None:
        record = {"minutes": round(self.minutes(), 3), "attempts": self.attempts}
        atomic_write_bytes(self.path, json.dumps(record).encode())

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> StepClock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._tick, name="step-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write()


def git_commit() -> str | None:
    """The commit of the mdream checkout this runs from (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def registered_trainers() -> list[str]:
    """The ``mdream train`` commands (the trainer registry of :mod:`mdream.training.cli`)."""
    from mdream.training.cli import app

    return [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable bundle manifest ({exc}).",
                         hint="Delete it to retrain every step (finished runs still resume from their checkpoints).") from None
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON record, or None where there is none; an unreadable one reads as empty (matching nothing)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _settings(config_cls: type, step: BundleStep, inputs: dict[str, str], smoke: bool) -> tuple[Any, dict[str, Any]]:
    """The step's config: the recipe, its pinned settings, the staged inputs, then the smoke budgets; and the values
    given."""
    from mdream.training.config import load_recipe, with_values

    values: dict[str, Any] = {}
    if step.recipe is not None:
        _, values = load_recipe(config_cls, step.recipe, step.trainer)
    values |= step.pinned | inputs
    if smoke:
        values |= step.smoke
    return with_values(config_cls(), values), values


def _seeds(config: Any) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("seed", "world_seed", "world_seeds", "data_seed") if hasattr(config, k)}


def _resolved(path: Path) -> str:
    return str(path.resolve())


class _Bundle:
    """The staged assets tree and the steps that fill it."""

    def __init__(self, out: Path, resume: str, smoke: bool, fp16: bool):
        self.out, self.resume, self.smoke, self.fp16 = out, resume, smoke, fp16
        self.staged = out / STAGED

    def path(self, name: str) -> Path:
        step = next(s for s in STEPS if s.name == name)
        return self.staged / step.output

    # each returns (config values given, the config) after training and exporting into the staged tree
    def clip(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.clip import ClipTrainingConfig, train_clip
        from mdream.training.export import export_model

        config, values = _settings(ClipTrainingConfig, step, {}, self.smoke)
        final = train_clip(config, self.out / step.name, resume=self.resume, given=list(values))
        export_model(final, self.path(step.name), fp16=self.fp16)
        return {}, values, config

    def face_embedder(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.analyser import FaceTrainingConfig, install_face_embedder, train_face_embedder

        config, values = _settings(FaceTrainingConfig, step, {}, self.smoke)
        onnx = train_face_embedder(config, self.out / step.name, resume=self.resume, given=list(values))
        install_face_embedder(onnx, self.path(step.name).parent)
        return {}, values, config

    def _tokenizer(self, step: BundleStep, inputs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.export import export_model
        from mdream.training.tokenizer import TokenizerTrainingConfig, train_tokenizer

        inputs = {"clip": _resolved(self.path("clip")), "face_embedder": _resolved(self.path("face_embedder")),
                  **inputs}
        config, values = _settings(TokenizerTrainingConfig, step, inputs, self.smoke)
        checkpoint = train_tokenizer(config, self.out / step.name, resume=self.resume, given=list(values))
        export_model(checkpoint, self.path(step.name), fp16=self.fp16, **step.export_options)
        return inputs, values, config

    def tokenizer(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        return self._tokenizer(step, {})

    def tokenizer_hidden(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        # the recipe's `init: toy` (the shipped tokenizer) becomes the tokenizer staged by the step before
        return self._tokenizer(step, {"init": _resolved(self.path("tokenizer"))})

    def ar(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.ar import ARTrainingConfig, train_ar
        from mdream.training.export import export_model

        inputs = {"keyframe_encoder": _resolved(self.path("tokenizer_hidden") / "encoder"),
                  "text_encoder": _resolved(self.path("clip")), "face_embedder": _resolved(self.path("face_embedder"))}
        config, values = _settings(ARTrainingConfig, step, inputs, self.smoke)
        final = train_ar(config, self.out / step.name, resume=self.resume, given=list(values))
        export_model(final, self.path(step.name), fp16=self.fp16)
        return inputs, values, config

    def _reader(self, step: BundleStep, config_cls: type, train: Callable, install: Callable,
                ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """An evaluator reader (no inputs from other steps): trained, then installed into the staged eval folder."""
        config, values = _settings(config_cls, step, {}, self.smoke)
        folder = train(config, self.out / step.name, resume=self.resume, given=list(values))
        install(folder, self.path(step.name).parent, fp16=self.fp16)
        return {}, values, config

    def analyser(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.analyser import (
            AnalyserTrainingConfig,
            install_frame_analyser,
            train_frame_analyser,
        )

        return self._reader(step, AnalyserTrainingConfig, train_frame_analyser, install_frame_analyser)

    def motion_reader(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.motion_reader import (
            MotionReaderTrainingConfig,
            install_motion_reader,
            train_motion_reader,
        )

        return self._reader(step, MotionReaderTrainingConfig, train_motion_reader, install_motion_reader)

    def video(self, step: BundleStep) -> tuple[dict[str, Any], dict[str, Any], Any]:
        from mdream.training.export import export_model
        from mdream.training.video import VideoTrainingConfig, train_video

        inputs = {"image_encoder": _resolved(self.path("clip"))}
        config, values = _settings(VideoTrainingConfig, step, inputs, self.smoke)
        final = train_video(config, self.out / step.name, resume=self.resume, given=list(values))
        export_model(final, self.path(step.name), fp16=self.fp16)
        return inputs, values, config


def _write_dest(staged: Path, dest: Path, done: list[str], fp16: bool) -> None:
    """Every finished component from the staged tree into DEST, through the export code."""
    from mdream.training.analyser import install_face_embedder, install_frame_analyser
    from mdream.training.export import export_model
    from mdream.training.motion_reader import install_motion_reader

    by_name = {s.name: s for s in STEPS}
    for name in done:
        if not by_name[name].ships:
            continue
        source, target = staged / by_name[name].output, dest / by_name[name].output
        if name == "face_embedder":
            install_face_embedder(source, target.parent)
        elif name == "analyser":
            install_frame_analyser(source, target.parent, fp16=fp16)
        elif name == "motion_reader":
            install_motion_reader(source, target.parent, fp16=fp16)
        else:
            # the tokenizer's CLIP reference becomes ../../toy-clip: DEST's CLIP (written first) has its weights
            export_model(source, target, fp16=fp16, **by_name[name].export_options)
    if dest.resolve() != ASSETS.resolve():
        bundle_yaml = dest / "bundles" / "toy" / "bundle.yaml"
        bundle_yaml.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TOY_BUNDLE_YAML, bundle_yaml)


def train_toy_bundle(out: str | Path, dest: str | Path | None = ASSETS, *, resume: str = "auto", smoke: bool = False,
                     fp16: bool = True, on_step: Callable[[StepReport], None] | None = None) -> BundleReport:
    """Train every toy component in dependency order under ``out`` and write them into ``dest`` (None: only the
    staged tree ``out/bundle``). See the module docstring."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; the bundle's runs go into a folder.")
    if resume not in ("auto", "never"):
        raise InputError(f"--resume {resume}: the bundle resumes every step (auto) or none (never).",
                         hint="Resume one component from a checkpoint with its own `mdream train` command.")
    dest_path = Path(dest).expanduser() if dest is not None else None
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    if manifest and manifest.get("smoke", smoke) != smoke:
        raise InputError(f"{out} holds a {'smoke' if manifest.get('smoke') else 'full'} bundle run; this one is "
                         f"{'smoke' if smoke else 'full'}.", hint="Use another --out.")
    recorded = {s["name"]: s for s in manifest.get("steps", []) if isinstance(s, dict) and "name" in s}
    manifest = {"bundle": "toy", "smoke": smoke, "fp16": fp16, "git_commit": git_commit(),
                "dest": str(dest_path) if dest_path else None,
                "expected_minutes_2_cores": sum(s.expected_minutes for s in STEPS), "expected_note": EXPECTED_NOTE,
                "steps": []}
    bundle = _Bundle(out, resume, smoke, fp16)
    trainers = registered_trainers()
    reports, done = [], []
    retrained: set[str] = set()
    for step in STEPS:
        entry = recorded.get(step.name, {})
        output = bundle.path(step.name)
        # recorded (finished, or begun: its checkpoints) under another recipe or trainer than this plan's: trained
        # again from the start
        plan = {"recipe": step.recipe, "trainer": step.trainer}
        finished = {k: entry.get(k) for k in plan} if entry.get("status") == "done" else None
        stale = any(record not in (None, plan) for record in (finished, _read_json(out / step.name / STEP_PLAN)))
        if step.trainer not in trainers:
            report = StepReport(step.name, "not available",
                                note=f"`mdream train {step.trainer}` does not exist yet: no {step.output} in this bundle")
        elif resume == "auto" and entry.get("status") == "done" and not stale and output.exists() \
                and not set(step.needs) & retrained:
            report = StepReport(step.name, "skipped", entry.get("minutes", 0.0), "finished earlier (manifest + output)")
            done.append(step.name)
            manifest["steps"].append(entry)
            reports.append(report)
            if on_step:
                on_step(report)
            continue
        else:
            console.rule(f"[bold]toy bundle: {step.name}")
            # a step whose inputs were retrained just now starts over: its checkpoints learnt from the old ones
            bundle.resume = "never" if set(step.needs) & retrained or stale else resume
            (out / step.name).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / step.name / STEP_PLAN, (json.dumps(plan) + "\n").encode())
            with StepClock(out / step.name / STEP_CLOCK, fresh=bundle.resume == "never") as clock:
                inputs, values, config = getattr(bundle, step.name)(step)
            retrained.add(step.name)
            minutes = round(clock.minutes(), 3)
            report = StepReport(step.name, "trained", minutes)
            done.append(step.name)
            manifest["steps"].append({
                "name": step.name, "status": "done", "trainer": step.trainer, "recipe": step.recipe,
                "settings": values, "seeds": _seeds(config) if config is not None else {}, "inputs": inputs,
                "run": str(out / step.name), "output": str(output), "minutes": minutes, "attempts": clock.attempts,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            _write_manifest(manifest_path, manifest)
            reports.append(report)
            if on_step:
                on_step(report)
            continue
        manifest["steps"].append({"name": step.name, "status": report.status, "note": report.note})
        reports.append(report)
        if on_step:
            on_step(report)
    if dest_path is not None:
        console.rule("[bold]toy bundle: writing DEST")
        _write_dest(bundle.staged, dest_path, done, fp16)
    _write_manifest(manifest_path, manifest)
    return BundleReport(out, dest_path, manifest_path, reports)
