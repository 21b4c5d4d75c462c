"""``mdream train export CKPT DEST``: write a checkpoint as a portable model folder.

Every model folder that mdream ships is written by :func:`export_model`, so each one holds the same
promises, checked before anything lands in DEST:

- a reference to another folder (the keyframe encoder's ``vision_model`` CLIP) is a path relative
  to the component folder that names it (``../../toy-clip``), or a hub id; never an absolute path.
  A local CLIP that does not already sit beside DEST (in DEST's parent folder, with the same
  weights) is copied into ``DEST/clip``, so the folder still loads after it is moved. A video model
  holds its frozen image encoder (the CLIP vision tower it was trained with) inside itself
  (``image_encoder/``, SVD's layout), so it loads from any place without a CLIP beside it;
- the decoder's ``keyframe_decoder.json`` holds its full ``sampling`` block (num_inference_steps,
  guidance_scale, identity_guidance_scale, scheduler): the explicit options, else the settings its
  ``eval.json`` scores were measured at, else the block the checkpoint already has;
- ``_name_or_path`` (where a library loaded a model from) is dropped from every config; a loadable
  config that still holds a machine path is refused (``InputError``, exit 2); the run's records
  (``train_config.json``, ``eval.json``, ...) keep only the last part of a machine path (what was
  used, by name), and the packaged CLIP and face embedder as ``toy`` / ``auto``;
- with ``fp16`` (``--fp16``), the float32 tensors of every ``*.safetensors`` file are stored as float16
  (:func:`store_half`), halving the folder; the configs keep the dtype the model computes in, and the loaders
  (``mdream.models.loading.load_pretrained``, diffusers, ``load_state_dict``) cast the weights back into it, so
  the model still runs in float32 on CPU. A tensor that float16 cannot hold (values beyond its range) stays float32.

Kinds of CKPT: a keyframe-tokenizer checkpoint (``encoder/`` + ``decoder/``; also an exported
tokenizer folder), a toy-CLIP checkpoint (``train/model.safetensors`` + ``state.json`` inside a
``mdream train clip`` run), a CLIP folder (``config.json`` + ``model.safetensors``, e.g. a CLIP
run's ``final/``), a keyframe AR checkpoint (``keyframe_ar/``; also its ``final/`` or an exported
folder), a video checkpoint (``video/``; also its ``final/`` or an exported folder, ``video.json``),
or a run folder (its newest complete checkpoint). Checkpoints hold the EMA weights (when the run
keeps an EMA), which is what is exported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from mdream.cache.store import apply_default_mode
from mdream.errors import InputError
from mdream.models.bundle import hash_file
from mdream.models.decoder import DECODER_CONFIG, SAMPLING_KEYS, SCHEDULERS
from mdream.models.encoders import ENCODER_CONFIG
from mdream.models.loading import read_json, resolve_reference, write_json
from mdream.models.video import CONFIG_NAME as VIDEO_CONFIG
from mdream.training.common import latest_checkpoint
from mdream.training.tokenizer import DEFAULT_FACE_EMBEDDER, TOY_CLIP

#: ``eval.json`` (``mdream train tokenizer-eval --save``) names for the same settings.
EVAL_SAMPLING_KEYS = {"num_inference_steps": "steps", "guidance_scale": "guidance_scale",
                      "identity_guidance_scale": "identity_guidance_scale", "scheduler": "scheduler"}
#: Files that record how a model was made (not loaded by any component); copied beside the weights.
TOKENIZER_RECORDS = ("train_config.json", "state.json", "eval.json")
CLIP_RECORDS = ("train_config.json", "training_summary.json")
AR_RECORDS = ("train_config.json", "state.json")
AR_CONFIG = "keyframe_ar.json"
VIDEO_RECORDS = ("train_config.json", "state.json", "training_summary.json")
#: The video model's own copy of its image encoder, as the run's ``image_encoder`` setting is recorded.
VIDEO_IMAGE_ENCODER = "image_encoder"
#: Where an exported tokenizer keeps a CLIP that does not sit beside it.
CLIP_FOLDER = "clip"

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_machine_path(value: str) -> bool:
    """Whether ``value`` names a place on one machine: an absolute POSIX or Windows path, or ``~/...``."""
    if not isinstance(value, str) or len(value) < 2:
        return False
    return (PurePosixPath(value).is_absolute() or bool(_WINDOWS_DRIVE.match(value))
            or PureWindowsPath(value).is_absolute() or value.startswith("~/"))


def machine_paths(data: Any, where: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every string in a parsed JSON/YAML document that is a machine path."""
    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += machine_paths(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += machine_paths(value, f"{where}[{i}]")
    elif isinstance(data, str) and is_machine_path(data):
        found.append((where or "(document)", data))
    return found


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    kind: str
    """``tokenizer``, ``clip``, ``keyframe-ar`` or ``video``."""
    dest: Path
    source: Path
    """The checkpoint (or folder) that was exported."""
    clip_reference: str | None = None
    """The keyframe encoder's ``vision_model`` as written (tokenizer exports)."""
    sampling: dict[str, Any] | None = None
    """The decoder's ``sampling`` block as written (tokenizer exports)."""
    notes: list[str] = field(default_factory=list)
    """What the export changed on the way (machine paths shortened, a CLIP copied in, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dest": str(self.dest), "source": str(self.source),
                "clip_reference": self.clip_reference, "sampling": self.sampling, "notes": self.notes}


# ---- finding what to export ------------------------------------------------------------------------


def _is_tokenizer(folder: Path) -> bool:
    return (folder / "encoder" / ENCODER_CONFIG).is_file() and (folder / "decoder" / DECODER_CONFIG).is_file()


def _is_clip_folder(folder: Path) -> bool:
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def _run_folder(source: Path) -> Path | None:
    """The training run that a checkpoint (``OUT/checkpoints/step-N``) or a CLIP run's ``final/`` belongs to."""
    if source.parent.name == "checkpoints" and (source.parent.parent / "train_config.json").is_file():
        return source.parent.parent
    if source.name == "final" and (source.parent / "checkpoints").is_dir():
        return source.parent
    return None


def _clip_weights(folder: Path) -> Path:
    """A toy-CLIP checkpoint's weights: the training state's (``train/``, written by the shared loop)."""
    return folder / "train" / "model.safetensors"


def _ar_model(folder: Path) -> Path | None:
    """The keyframe AR model folder of an AR checkpoint (``step-N/keyframe_ar``) or the model folder itself."""
    for candidate in (folder / "keyframe_ar", folder):
        if (candidate / AR_CONFIG).is_file():
            return candidate
    return None


def _video_model(folder: Path) -> Path | None:
    """The video model folder of a video checkpoint (``step-N/video``) or the model folder itself."""
    for candidate in (folder / "video", folder):
        if (candidate / VIDEO_CONFIG).is_file():
            return candidate
    return None


def _is_clip_checkpoint(folder: Path) -> bool:
    run = _run_folder(folder)
    return (_clip_weights(folder).is_file() and (folder / "state.json").is_file() and run is not None
            and (run / "tokenizer" / "tokenizer.json").is_file())


def find_checkpoint(checkpoint: str | Path) -> tuple[Path, str]:
    """(folder, kind) of what ``checkpoint`` names; kind is ``tokenizer``, ``clip-checkpoint``, ``clip``,
    ``keyframe-ar`` or ``video``."""
    source = Path(checkpoint).expanduser()
    if not source.exists():
        raise InputError(f"Checkpoint {source} does not exist.",
                         hint="Give a checkpoint folder (RUN/checkpoints/step-N) or a training run folder.")
    if not source.is_dir():
        raise InputError(f"Checkpoint {source} is a file; a checkpoint is a folder (RUN/checkpoints/step-N).")
    if (source / "checkpoints").is_dir() and not _is_tokenizer(source) and not _is_clip_folder(source) \
            and _ar_model(source) is None and _video_model(source) is None:
        newest = latest_checkpoint(source)
        if newest is None:
            raise InputError(f"The run folder {source} holds no complete checkpoint (no checkpoints/step-N with state.json).")
        source = newest
    if _is_tokenizer(source):
        return source, "tokenizer"
    if _ar_model(source) is not None:
        return source, "keyframe-ar"
    if _video_model(source) is not None:
        return source, "video"
    if _is_clip_checkpoint(source):
        return source, "clip-checkpoint"
    if _is_clip_folder(source):
        return source, "clip"
    raise InputError(
        f"{source} is not a checkpoint mdream can export.",
        hint="Give a keyframe-tokenizer checkpoint (encoder/ and decoder/), a toy-CLIP checkpoint "
             "(train/model.safetensors and state.json in a `mdream train clip` run), a CLIP folder (config.json + "
             "model.safetensors, e.g. RUN/final), a keyframe AR checkpoint (keyframe_ar/), a video checkpoint (video/) "
             "or a run folder holding checkpoints/.",
    )


# ---- the keyframe encoder's CLIP -------------------------------------------------------------------


def weights_key(folder: Path) -> str:
    """The hashes of a model folder's safetensors files: equal keys, equal weights."""
    files = sorted(folder.glob("*.safetensors"))
    return ";".join(f"{f.name}={hash_file(f)}" for f in files)


def _same_weights(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    key = weights_key(a)
    return bool(key) and key == weights_key(b)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("./", "../", ".\\", "..\\")) or ref in (".", "..")


def _clip_reference(source: Path, dest: Path, explicit: str | None, notes: list[str]) -> tuple[str, Path | None]:
    """(vision_model reference to write, CLIP folder to copy into DEST/clip or None)."""
    encoder_dir = source / "encoder"
    ref = read_json(encoder_dir / ENCODER_CONFIG, "keyframe encoder").get("vision_model")
    if not isinstance(ref, str) or not ref:
        raise InputError(f"{encoder_dir / ENCODER_CONFIG} names no vision_model (the CLIP its tokens are made from).")
    resolved = Path(resolve_reference(encoder_dir, ref))
    local = resolved if resolved.is_dir() else None
    if explicit is not None:
        if is_machine_path(explicit):
            raise InputError(f"--clip-reference {explicit} is an absolute path: an exported model must not name a "
                             "place on this machine.",
                             hint="Give it relative to DEST/encoder (e.g. ../../toy-clip) or as a hub id.")
        target = (dest / "encoder" / explicit).resolve()
        if _looks_like_path(explicit) or target.exists():
            if not (target / "config.json").is_file():
                raise InputError(f"--clip-reference {explicit}: there is no CLIP folder at {target} "
                                 f"(the reference is read from {dest / 'encoder'}).")
            if local is not None and not _same_weights(local, target):
                raise InputError(f"--clip-reference {explicit} names {target}, whose weights differ from the CLIP the "
                                 f"checkpoint's tokens were trained on ({local}).")
        return explicit, None
    if local is None:
        if is_machine_path(ref):
            raise InputError(f"The checkpoint's encoder names its CLIP at {ref}, which is not on this machine.",
                             hint="Give --clip-reference (relative to DEST/encoder, or a hub id).")
        return ref, None  # a hub id travels as it is
    if local == encoder_dir.resolve() or encoder_dir.resolve() in local.parents:
        return os.path.relpath(local, encoder_dir.resolve()), None  # saved inside the encoder: copied with it
    home = dest.resolve().parent
    siblings = [local] if local.parent == home and local != dest.resolve() else []
    if home.is_dir():
        siblings += sorted(p for p in home.iterdir() if p.is_dir() and p != dest.resolve() and p != local
                           and not p.name.startswith(".") and (p / "config.json").is_file())
    for candidate in siblings:
        if _same_weights(local, candidate):
            return os.path.relpath(candidate, (dest / "encoder").resolve()), None
    notes.append(f"copied the CLIP ({local}) into {dest / CLIP_FOLDER}: no folder beside {dest} holds its weights")
    return f"../{CLIP_FOLDER}", local


# ---- sampling settings -----------------------------------------------------------------------------


def sampling_settings(decoder_config: dict, record: dict | None, options: dict[str, Any], notes: list[str]) -> dict:
    """The full ``sampling`` block: each key from ``options``, else the eval record, else the decoder's own."""
    saved = decoder_config.get("sampling") or {}
    measured = {k: record.get(e) for k, e in EVAL_SAMPLING_KEYS.items()} if record else {}
    measured = {k: v for k, v in measured.items() if v not in (None, "")}
    sampling: dict[str, Any] = {}
    for key in SAMPLING_KEYS:
        for value in (options.get(key), measured.get(key), saved.get(key)):
            if value is not None:
                sampling[key] = value
                break
    sampling.setdefault("scheduler", decoder_config.get("scheduler"))
    missing = [k for k in SAMPLING_KEYS if sampling.get(k) is None]
    if missing:
        raise InputError(
            f"No {', '.join(missing)} for the decoder's sampling block: the checkpoint has no eval.json and its "
            "decoder no sampling settings.",
            hint="Measure it (`mdream train tokenizer-eval CKPT --save CKPT/eval.json`) or give --steps, "
                 "--guidance-scale and --identity-guidance.",
        )
    try:
        sampling = {"num_inference_steps": int(sampling["num_inference_steps"]),
                    "guidance_scale": float(sampling["guidance_scale"]),
                    "identity_guidance_scale": float(sampling["identity_guidance_scale"]),
                    "scheduler": str(sampling["scheduler"])}
    except (TypeError, ValueError) as exc:
        raise InputError(f"Bad sampling setting: {exc}.") from None
    if sampling["num_inference_steps"] < 1:
        raise InputError(f"--steps must be >= 1, got {sampling['num_inference_steps']}.")
    if sampling["guidance_scale"] < 0 or sampling["identity_guidance_scale"] < 0:
        raise InputError("--guidance-scale and --identity-guidance must be >= 0.")
    if sampling["scheduler"] not in SCHEDULERS:
        raise InputError(f"Unknown scheduler '{sampling['scheduler']}'.", hint=f"Choose one of: {', '.join(SCHEDULERS)}.")
    differs = [k for k in SAMPLING_KEYS if k in measured and measured[k] != sampling[k]]
    if differs:
        notes.append("eval.json's scores were measured at other sampling settings ("
                     + ", ".join(f"{k} {measured[k]}" for k in differs) + ")")
    return sampling


# ---- half-precision storage ------------------------------------------------------------------------

#: The largest magnitude float16 holds.
HALF_MAX = 65504.0


def store_half(folder: Path, notes: list[str] | None = None) -> int:
    """Rewrite every ``*.safetensors`` file under ``folder`` with its float32 tensors stored as float16.

    A tensor with a value beyond float16's range (or not finite) keeps float32; integer tensors are kept as they
    are; a file holding no float32 tensor is left untouched (byte for byte). Returns how many tensors were halved.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    halved = 0
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        state = load_file(str(path))
        if not any(t.dtype == torch.float32 for t in state.values()):
            continue
        kept = []
        for key, tensor in state.items():
            if tensor.dtype != torch.float32:
                continue
            if tensor.numel() and not (torch.isfinite(tensor).all() and tensor.abs().max() <= HALF_MAX):
                kept.append(key)
                continue
            state[key] = tensor.half()
            halved += 1
        if kept and notes is not None:
            notes.append(f"{path.relative_to(folder)}: kept {len(kept)} tensor(s) in float32 (beyond float16's "
                         f"range): {', '.join(kept[:3])}")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return halved


# ---- records and configs ---------------------------------------------------------------------------


def _record_source(source: Path, name: str) -> Path | None:
    if (source / name).is_file():
        return source / name
    run = _run_folder(source)
    return run / name if run is not None and (run / name).is_file() else None


def _is_packaged(value: Any, packaged: Path) -> bool:
    if not isinstance(value, str) or not value or not Path(value).exists() or not packaged.exists():
        return False
    path = Path(value)
    if path.resolve() == packaged.resolve():
        return True
    if path.is_dir() and packaged.is_dir():
        return _same_weights(path, packaged)
    return path.is_file() and packaged.is_file() and hash_file(path) == hash_file(packaged)


def portable_train_config(path: Path, clip: str | None = None, notes: list[str] | None = None) -> None:
    """Rewrite a run's recorded settings (``train_config.json``) so they name no place on this machine.

    The packaged CLIP and face embedder become ``toy`` / ``auto``; ``clip`` (when given) replaces
    any other CLIP setting (the exported folder's own reference to it); any other machine path is
    cut to its last part: a record of what the run used, by name.
    """
    cfg = read_json(path, "training settings")
    if cfg.get("clip") == "toy" or _is_packaged(cfg.get("clip"), TOY_CLIP):
        cfg["clip"] = "toy"
    elif clip is not None and "clip" in cfg:
        cfg["clip"] = clip
    if _is_packaged(cfg.get("face_embedder"), DEFAULT_FACE_EMBEDDER):
        cfg["face_embedder"] = "auto"
    write_json(path, _shorten_machine_paths(cfg, path.name, notes if notes is not None else []))


def _shorten_machine_paths(data: Any, where: str, notes: list[str]) -> Any:
    if isinstance(data, dict):
        return {k: _shorten_machine_paths(v, f"{where}:{k}", notes) for k, v in data.items()}
    if isinstance(data, list):
        return [_shorten_machine_paths(v, where, notes) for v in data]
    if isinstance(data, str) and is_machine_path(data):
        short = PurePosixPath(data.replace("\\", "/")).name
        notes.append(f"{where}: {data} recorded as '{short}'")
        return short
    return data


def _drop_name_or_path(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_name_or_path(v) for k, v in data.items() if k != "_name_or_path"}
    if isinstance(data, list):
        return [_drop_name_or_path(v) for v in data]
    return data


def _config_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".yml"))


def _read_config(path: Path) -> Any:
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"Cannot read {path}: {exc}") from None


def make_portable(folder: Path, records: tuple[str, ...], notes: list[str]) -> None:
    """Drop ``_name_or_path`` everywhere, shorten machine paths in the top-level records, refuse any other."""
    offenders = []
    for path in _config_files(folder):
        data = _read_config(path)
        clean = _drop_name_or_path(data)
        is_record = path.parent == folder and path.name in records
        if is_record:
            clean = _shorten_machine_paths(clean, path.name, notes)
        if clean != data:
            if path.suffix == ".json":
                write_json(path, clean)
            else:
                path.write_text(yaml.safe_dump(clean, sort_keys=False))
        offenders += [(path.relative_to(folder), key, value) for key, value in machine_paths(clean)]
    if offenders:
        listed = "; ".join(f"{p}: {key} = {value}" for p, key, value in offenders[:5])
        raise InputError(f"Refusing to export: a config would name a place on this machine ({listed}).",
                         hint="An exported model names other folders relative to itself; re-save the component "
                              "without absolute paths (or give --clip-reference for the encoder's CLIP).")


# ---- the export ------------------------------------------------------------------------------------


def _copy_records(source: Path, staging: Path, names: tuple[str, ...]) -> None:
    for name in names:
        found = _record_source(source, name)
        if found is not None:
            shutil.copy(found, staging / name)


def _export_tokenizer(source: Path, dest: Path, staging: Path, clip_reference: str | None,
                      options: dict[str, Any], result: ExportResult) -> None:
    reference, clip_copy = _clip_reference(source, dest, clip_reference, result.notes)
    for part in ("encoder", "decoder"):
        shutil.copytree(source / part, staging / part)
    if clip_copy is not None:
        shutil.copytree(clip_copy, staging / CLIP_FOLDER, ignore=shutil.ignore_patterns(".*"))
    encoder_cfg = read_json(staging / "encoder" / ENCODER_CONFIG, "keyframe encoder")
    encoder_cfg["vision_model"] = reference
    write_json(staging / "encoder" / ENCODER_CONFIG, encoder_cfg)

    _copy_records(source, staging, TOKENIZER_RECORDS)
    record = _read_config(staging / "eval.json") if (staging / "eval.json").is_file() else None
    decoder_cfg = read_json(staging / "decoder" / DECODER_CONFIG, "keyframe decoder")
    sampling = sampling_settings(decoder_cfg, record if isinstance(record, dict) else None, options, result.notes)
    decoder_cfg["sampling"] = sampling
    decoder_cfg["scheduler"] = sampling["scheduler"]  # the decoder's own sampler is the one it was measured with
    write_json(staging / "decoder" / DECODER_CONFIG, decoder_cfg)
    if (staging / "train_config.json").is_file():
        # the run's CLIP setting, said from the exported folder: where its CLIP now is (or its hub id)
        target = staging / "encoder" / reference
        clip = os.path.relpath(target, staging) if target.exists() else reference
        clip = "toy" if target.is_dir() and _is_packaged(str(target), TOY_CLIP) else clip
        portable_train_config(staging / "train_config.json", clip=clip.replace(os.sep, "/"), notes=result.notes)
    result.clip_reference, result.sampling = reference, sampling


def _export_clip_checkpoint(source: Path, staging: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from mdream.models.loading import quiet_loading
    from mdream.models.toy_clip import build_toy_clip, save_clip_folder
    from mdream.training.clip import ClipTrainingConfig
    from mdream.training.config import values_from_mapping, with_values

    run = _run_folder(source)
    assert run is not None  # _is_clip_checkpoint checked it
    saved = run / "train_config.json"
    config = with_values(ClipTrainingConfig(), values_from_mapping(
        ClipTrainingConfig, read_json(saved, "CLIP training settings"), str(saved), saved_run=True))
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    model = build_toy_clip(tokenizer, image_size=config.image_size, patch_size=config.patch_size,
                           hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
                           projection_dim=config.projection_dim)
    try:
        model.load_state_dict(load_file(_clip_weights(source)))
    except (RuntimeError, OSError) as exc:
        raise InputError(f"{_clip_weights(source)} does not fit the CLIP its run's settings describe: {exc}") from None
    save_clip_folder(model, tokenizer, staging)
    state = read_json(source / "state.json", "checkpoint state")
    (staging / "training_summary.json").write_text(json.dumps(
        {"steps": state.get("step"), "retrieval_top1_of_256": state.get("retrieval_top1")}, indent=2) + "\n")
    shutil.copy(run / "train_config.json", staging / "train_config.json")


def _export_ar(source: Path, staging: Path) -> None:
    """The (EMA) keyframe AR model of a checkpoint, checked by loading it, with the run's records."""
    from mdream.models.keyframe_ar import KeyframeAR

    model = _ar_model(source)
    assert model is not None  # find_checkpoint checked it
    KeyframeAR.from_pretrained(model)  # a folder that does not load is not exported
    shutil.copytree(model, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    _copy_records(source, staging, AR_RECORDS)


def _export_video(source: Path, staging: Path, notes: list[str]) -> None:
    """The (EMA) video model of a checkpoint, checked by loading it, with its image encoder and the run's records.

    The run's ``image_encoder`` setting (a CLIP folder on this machine) is recorded as ``toy`` when it is the
    packaged toy CLIP, else as ``image_encoder``: the copy of its vision tower inside the exported folder.
    """
    from mdream.models.video import ImageToVideoModel

    model = _video_model(source)
    assert model is not None  # find_checkpoint checked it
    try:
        ImageToVideoModel.from_pretrained(model)  # a folder that does not load is not exported
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - torn weights raise the loaders' own errors (safetensors, torch)
        raise InputError(f"The video model {model} does not load: {exc}",
                         hint="Export another checkpoint (RUN/checkpoints/step-N) or the run's final/.") from None
    shutil.copytree(model, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    _copy_records(source, staging, VIDEO_RECORDS)
    settings = staging / "train_config.json"
    if settings.is_file():
        cfg = read_json(settings, "training settings")
        encoder = cfg.get("image_encoder")
        if isinstance(encoder, str) and encoder:
            packaged = encoder == "toy" or _is_packaged(encoder, TOY_CLIP)
            cfg["image_encoder"] = "toy" if packaged else VIDEO_IMAGE_ENCODER
            if cfg["image_encoder"] != encoder:
                notes.append(f"train_config.json: image_encoder {encoder} recorded as '{cfg['image_encoder']}'")
            write_json(settings, cfg)
        portable_train_config(settings, notes=notes)


def _export_clip_folder(source: Path, staging: Path) -> None:
    shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "state.pt", "checkpoints"))
    for name in CLIP_RECORDS:
        if not (staging / name).is_file() and (found := _record_source(source, name)) is not None:
            shutil.copy(found, staging / name)


def export_model(
    checkpoint: str | Path,
    dest: str | Path,
    *,
    clip_reference: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    identity_guidance_scale: float | None = None,
    scheduler: str | None = None,
    fp16: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` (a tokenizer, CLIP, keyframe AR or video checkpoint, a model folder or a run folder) to
    ``dest``.

    Everything is written to a staging folder beside ``dest`` and checked (no machine path in any
    config) before it replaces the exported parts of ``dest``; other files in ``dest`` are left alone,
    except records (``eval.json``, ...) that this export does not have, which never stay beside
    other weights. ``clip_reference`` and the sampling options apply to tokenizer checkpoints. ``fp16``: store the
    weights in half precision (:func:`store_half`).
    """
    source, kind = find_checkpoint(checkpoint)
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise InputError(f"DEST {dest} is a file; the export writes a folder.")
    options = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
               "identity_guidance_scale": identity_guidance_scale, "scheduler": scheduler}
    if kind != "tokenizer" and (clip_reference is not None or any(v is not None for v in options.values())):
        what = {"keyframe-ar": "a keyframe AR model", "video": "a video model"}.get(kind, "a CLIP")
        raise InputError(f"{source} is {what}: --clip-reference and the sampling options apply to tokenizer checkpoints.")
    result = ExportResult(kind=kind if kind in ("tokenizer", "keyframe-ar", "video") else "clip", dest=dest, source=source)
    records = {"tokenizer": TOKENIZER_RECORDS, "keyframe-ar": AR_RECORDS, "video": VIDEO_RECORDS}.get(kind, CLIP_RECORDS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if kind == "tokenizer":
            _export_tokenizer(source, dest, staging, clip_reference, options, result)
        elif kind == "clip-checkpoint":
            _export_clip_checkpoint(source, staging)
        elif kind == "keyframe-ar":
            _export_ar(source, staging)
        elif kind == "video":
            _export_video(source, staging, result.notes)
        else:
            _export_clip_folder(source, staging)
        make_portable(staging, records, result.notes)
        if fp16:
            halved = store_half(staging, result.notes)
            result.notes.append(f"stored {halved} tensors in float16")
        for path in staging.rglob("*"):  # safetensors writes its files private (0600); a model folder is shared data
            apply_default_mode(path, directory=path.is_dir())
        dest.mkdir(exist_ok=True)
        for name in records:
            if (dest / name).is_file() and not (staging / name).exists():
                (dest / name).unlink()  # never leave another run's record beside these weights
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(entry), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
