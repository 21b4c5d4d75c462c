"""Model bundles: one YAML file naming every component of the pipeline.

A bundle is a folder holding ``bundle.yaml``::

    name: toy
    components:
      face_embedder: {path: ../../eval/toy_face_recognition.onnx}
      text_encoder: {path: toy-clip}
      keyframe_encoder: {path: tokenizer/encoder}
      keyframe_decoder: {path: tokenizer/decoder}
      keyframe_ar: {path: ar}
      video: {path: video}

A component is a local path (relative to the bundle folder, absolute, or ``~/...``) or a hub id
(``{hub: stabilityai/stable-diffusion-xl-base-1.0, revision: main}``); both sizes go through the
same ``from_pretrained`` code. Optional per-component settings (see :data:`SETTING_KEYS`):

* ``dtype``: ``float32``, ``float16`` or ``bfloat16``; the loaded model is cast to it;
* ``steps``, ``sampler``, ``guidance``: sampling defaults of a sampling component (the keyframe
  decoder, the video model); they override what the component's own files record
  (``keyframe_decoder.json``'s ``sampling``), and a script's ``output.sampling`` overrides both;
* ``decode``: the keyframe AR model's KV cache while it predicts (``keyframe_ar`` only): ``dynamic`` (the
  default; transformers' cache), ``static`` (preallocated, fixed shapes) or ``graphs`` (static, each step replayed
  from a captured CUDA graph; on a CPU or with ``--offload`` the stage says so and decodes with ``dynamic``):
  :mod:`mdream.models.static_decode`;
* ``backbone``: ``{hub: ID, revision: REV}`` or ``{path: P}``: the pretrained model a trained
  component is built on (its own config names it too); listed by ``mdream models show``, checked for
  presence, and part of the component's identity. ``bundle.load(COMPONENT, device=...)`` loads one through the model
registry (:mod:`mdream.models.registry`) by its class name: an explicit ``class:`` in bundle.yaml,
else the ``_class_name`` its folder's ``<component>.json`` records, else a rule for formats that
record none (an ``.onnx`` file: ``FaceIdentityEmbedder``; a transformers CLIP folder: ``TextEncoder``).

A component's *identity* enters the cache key of every stage that uses it, so retraining a model
invalidates exactly the artifacts it produced: for a local path, the hashes of its configs and
weights (remembered between runs: :mod:`mdream.cache.hashes`); for a hub id, the commit its revision
resolves to in the local Hugging Face cache (``hub:ID@SHA``), or ``hub-unresolved:ID@REVISION`` when
that revision is not cached (mdream never asks the network). The settings above, when given, enter
the identity too; a bundle that sets none keeps its keys.

A hub component is *present* when its revision is in the local hub cache; mdream never downloads
one. :meth:`ModelBundle.require` raises one :class:`~mdream.errors.NotBuiltError` naming every
absent component (and absent backbone) a run needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdream.errors import InputError, NotBuiltError

BUNDLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "bundles"

COMPONENT_NAMES = (
    "face_embedder",  # face photo -> 512-d identity embedding (insightface recognition ONNX)
    "text_encoder",  # descriptor text -> pooled embedding (CLIP/LongCLIP text tower)
    "keyframe_encoder",  # image -> N keyframe tokens (frozen CLIP vision + token compressor)
    "keyframe_decoder",  # tokens + faces + descriptor -> image (diffusion UNet)
    "keyframe_ar",  # script + history -> next keyframe tokens (LLaMA-class + GMM head)
    "video",  # keyframe + first-frame anchor -> clip (SVD-class)
)


#: Model classes of component files in formats that record no class name, by file suffix.
SUFFIX_CLASSES = {".onnx": "FaceIdentityEmbedder"}
#: Model classes of transformers folders (``config.json`` without ``_class_name``), by ``model_type``.
TRANSFORMERS_CLASSES = {"clip": "TextEncoder", "clip_text_model": "TextEncoder"}

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

#: dtypes a component may be cast to (``dtype:`` in bundle.yaml).
DTYPES = ("float32", "float16", "bfloat16")
#: Per-component settings bundle.yaml may give besides where the component lives.
SETTING_KEYS = ("dtype", "steps", "sampler", "guidance", "decode")
#: Components that sample (and so take ``steps`` / ``sampler`` / ``guidance``).
SAMPLING_COMPONENTS = ("keyframe_decoder", "video")
#: The keyframe AR model's KV caches (``decode:``; :class:`mdream.models.keyframe_ar.MovieSession`).
DECODE_MODES = ("dynamic", "static", "graphs")
_SPEC_KEYS = {"path", "hub", "revision", "class", "backbone", "train", *SETTING_KEYS}


@dataclass(frozen=True)
class ComponentRef:
    """Where one component lives: a local path or a hub id (and, optionally, its model class)."""

    name: str
    path: Path | None = None
    hub_id: str | None = None
    revision: str | None = None
    class_name: str | None = None
    """The model class to load it with (bundle.yaml's ``class:``); None: read from its files."""
    dtype: str | None = None
    """``float32`` / ``float16`` / ``bfloat16`` to cast the loaded model to; None: as saved."""
    steps: int | None = None
    """Sampling steps (sampling components); None: what the component's files record."""
    sampler: str | None = None
    """Sampler name (``ddim``, ``ddpm``, ``euler``, ``dpmpp``); None: the component's own."""
    guidance: float | None = None
    """Classifier-free guidance scale; None: what the component's files record."""
    decode: str | None = None
    """The keyframe AR model's KV cache (``dynamic``, ``static``, ``graphs``); None: ``dynamic``."""
    backbone: ComponentRef | None = None
    """The pretrained model this component is built on, when bundle.yaml names it."""
    train: str | None = None
    """What a user trains to make this component (bundle.yaml's ``train:``, shown by ``models show``)."""

    @property
    def exists(self) -> bool:
        """Listed with a location that can be looked at: a local path that exists, or any hub id."""
        return self.hub_id is not None or (self.path is not None and self.path.exists())

    @property
    def present(self) -> bool:
        """Usable on this machine without the network: the path exists, or the hub revision is cached."""
        if self.hub_id is not None:
            return hub_snapshot(self.hub_id, self.revision or "main") is not None
        return self.path is not None and self.path.exists()

    def settings(self) -> dict[str, Any]:
        """The settings bundle.yaml gives this component (only those it gives)."""
        values = {"dtype": self.dtype, "steps": self.steps, "sampler": self.sampler, "guidance": self.guidance,
                  "decode": self.decode}
        return {k: v for k, v in values.items() if v is not None}

    def describe_location(self) -> str:
        """``hub ID@REVISION`` or the path."""
        if self.hub_id is not None:
            return f"hub {self.hub_id}@{self.revision or 'main'}"
        return str(self.path)

    def absence(self) -> str | None:
        """Why this component cannot be used here (None when it and its backbone are present)."""
        problems = []
        if not self.present:
            if self.hub_id is not None:
                problems.append(f"{self.describe_location()} is not in the local Hugging Face cache")
            else:
                problems.append(f"{self.path} does not exist")
        if self.backbone is not None and not self.backbone.present:
            what = "is not in the local Hugging Face cache" if self.backbone.hub_id else "does not exist"
            problems.append(f"its backbone {self.backbone.describe_location()} {what}")
        if not problems:
            return None
        text = " and ".join(problems)
        return f"{text} ({self.train})" if self.train and not self.present else text

    @property
    def location(self) -> str:
        return self.hub_id if self.hub_id else str(self.path)


class _ClassOrInstanceMethod:
    """``ModelBundle.load(...)`` on the class finds a bundle; ``bundle.load(...)`` loads a component."""

    def __init__(self, on_class, on_instance):
        self.on_class, self.on_instance = on_class, on_instance
        self.__doc__ = f"On the class: {on_class.__doc__}\nOn a bundle: {on_instance.__doc__}"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self.on_class.__get__(objtype, objtype)
        return self.on_instance.__get__(obj, objtype)


@dataclass
class ModelBundle:
    """A loaded ``bundle.yaml``: component references plus their identities."""

    name: str
    root: Path
    components: dict[str, ComponentRef] = field(default_factory=dict)
    file: Path | None = None
    """The bundle's YAML file (``root/bundle.yaml`` unless it was found by a file path)."""
    _identities: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def find(cls, name_or_path: str, base_dir: Path | None = None) -> ModelBundle:
        """Find a bundle by bundled name (``toy``), by folder path (relative to ``base_dir``) or by the
        path of its YAML file (any name ending in ``.yaml`` / ``.yml``)."""
        candidates = bundle_candidates(name_or_path, base_dir)
        for folder in candidates:
            if folder.suffix.lower() in (".yaml", ".yml") and folder.is_file():
                return cls._from_folder(folder.parent, folder)
            if (folder / "bundle.yaml").is_file():
                return cls._from_folder(folder)
        known = bundled_names()
        raise InputError(
            f"Model bundle {name_or_path!r} was not found (looked for bundle.yaml in: "
            + ", ".join(str(c) for c in candidates) + ").",
            hint=f"use a bundled name ({', '.join(known) or 'none installed'}) or a folder holding bundle.yaml",
        )

    @classmethod
    def _from_folder(cls, folder: Path, path: Path | None = None) -> ModelBundle:
        path = path or folder / "bundle.yaml"
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"Cannot read model bundle {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("components", {}), dict):
            raise InputError(f"Model bundle {path} must be a mapping with a 'components' mapping.")
        components = {}
        for name, spec in (data.get("components") or {}).items():
            if name not in COMPONENT_NAMES:
                raise InputError(
                    f"Model bundle {path}: unknown component {name!r}.",
                    hint=f"components are: {', '.join(COMPONENT_NAMES)}",
                )
            components[name] = _parse_component(path, folder, name, spec)
        default_name = folder.name if path.name == "bundle.yaml" else path.stem
        return cls(name=str(data.get("name", default_name)), root=folder, components=components, file=path)

    def component(self, name: str) -> ComponentRef:
        """The reference of a component that must exist; NotBuiltError otherwise."""
        ref = self.components.get(name)
        if ref is None or not ref.present:
            where = ref.describe_location() if ref else "not listed in bundle.yaml"
            cached = " (not in the local Hugging Face cache; mdream never downloads models)" if ref and ref.hub_id else ""
            raise NotBuiltError(
                f"The model bundle {self.name!r} has no {name} component yet ({where}){cached}.",
                hint="train it with `mdream train ...`, fetch it with `huggingface-cli download ID`, or point the "
                "script's output.model_bundle at a bundle that has it",
            )
        return ref

    def class_name(self, name: str) -> str:
        """The model class a component is loaded with (rules: this module's docstring)."""
        ref = self.component(name)
        if ref.class_name:
            return ref.class_name
        path = ref.path
        if path is not None and path.is_file() and path.suffix.lower() in SUFFIX_CLASSES:
            return SUFFIX_CLASSES[path.suffix.lower()]
        if path is not None and path.is_dir():
            for config_name in (f"{name}.json", "config.json"):
                config = _read_config(path / config_name)
                if isinstance(config.get("_class_name"), str):
                    return config["_class_name"]
                if config_name == "config.json" and config.get("model_type") in TRANSFORMERS_CLASSES:
                    return TRANSFORMERS_CLASSES[config["model_type"]]
        from mdream.models.registry import known_classes

        raise InputError(
            f"The model bundle {self.name!r}: cannot tell which model class loads its {name} component "
            f"({ref.location}): it records no class name.",
            hint=f"add `class: NAME` to the component in bundle.yaml (known classes: {', '.join(known_classes())})",
        )

    def load_component(self, name: str, device: str | None = None) -> Any:
        """Load a component with its model class's ``from_pretrained`` (and move it to ``device``)."""
        from mdream.models.registry import load_model

        ref = self.component(name)
        model = load_model(self.class_name(name), ref.location, name, device=device)
        if ref.dtype is not None:
            import torch

            if isinstance(model, torch.nn.Module):
                model = model.to(dtype=getattr(torch, ref.dtype))
        return model

    def sampling(self, name: str) -> dict[str, Any]:
        """A sampling component's defaults: ``steps``, ``guidance``, ``identity_guidance``, ``sampler``.

        bundle.yaml's settings override what the component's files record (``<name>.json``'s
        ``sampling``: ``num_inference_steps``, ``guidance_scale``, ``identity_guidance_scale``,
        ``scheduler``); a value neither gives is None.
        """
        ref = self.components.get(name)
        recorded: dict[str, Any] = {}
        if ref is not None and ref.path is not None and ref.path.is_dir():
            config = _read_config(ref.path / f"{name}.json")
            if name == "video":  # video.json records its sampling at the top level, SVD's way; Euler only
                recorded = {"num_inference_steps": config.get("num_inference_steps"),
                            "guidance_scale": config.get("max_guidance_scale"), "scheduler": "euler"}
            else:
                recorded = config.get("sampling") if isinstance(config.get("sampling"), dict) else {}
                recorded = {**recorded, "scheduler": recorded.get("scheduler", config.get("scheduler"))}
        out = {
            "steps": recorded.get("num_inference_steps"),
            "guidance": recorded.get("guidance_scale"),
            "identity_guidance": recorded.get("identity_guidance_scale"),
            "sampler": recorded.get("scheduler"),
        }
        if ref is not None:
            out.update({k: v for k, v in ref.settings().items() if k in ("steps", "guidance", "sampler")})
        return out

    def missing(self, names: tuple[str, ...] | list[str]) -> dict[str, str]:
        """Component name -> why it cannot be used here, for each of ``names`` that is absent."""
        out = {}
        for name in names:
            ref = self.components.get(name)
            if ref is None:
                out[name] = "not listed in its bundle.yaml"
            elif (why := ref.absence()) is not None:
                out[name] = why
        return out

    def require(self, names: tuple[str, ...] | list[str], purpose: str = "this run") -> None:
        """Raise one NotBuiltError naming every absent component of ``names`` (and absent backbones)."""
        missing = self.missing(names)
        if not missing:
            return
        listed = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise NotBuiltError(
            f"The model bundle {self.name!r} ({self.file or self.root}) lacks {len(missing)} component(s) {purpose} needs: "
            f"{listed}. mdream never downloads models.",
            hint=f"`mdream models show {self.file or self.root}` lists every component; fetch hub models with "
            "`huggingface-cli download ID`, train the others with `mdream train ...`, or use `model_bundle: toy`",
        )

    load = _ClassOrInstanceMethod(find, load_component)

    def identity(self, names: tuple[str, ...] | list[str]) -> str:
        """A hash of the named components' configs and weights (absent ones hash as absent)."""
        h = hashlib.sha256()
        for name in sorted(names):
            h.update(f"{name}={self._component_identity(name)};".encode())
        return h.hexdigest()

    def _component_identity(self, name: str) -> str:
        if name not in self._identities:
            ref = self.components.get(name)
            if ref is None or not ref.exists:
                ident = f"absent:{name}"
            else:
                ident = _ref_identity(ref)
                if ref.path is not None:
                    # A component may name another folder it loads (the keyframe encoder's CLIP vision
                    # tower): retraining that folder must invalidate this component's artifacts too.
                    for linked in linked_folders(ref.path):
                        ident += f"+{linked.name}:" + hash_tree(linked)
                if ref.backbone is not None:
                    backbone = ref.backbone
                    ident += "+backbone:" + (_ref_identity(backbone) if backbone.present or backbone.hub_id
                                             else f"absent:{backbone.path}")
                if ref.settings():
                    ident += "+settings:" + json.dumps(ref.settings(), sort_keys=True)
            self._identities[name] = ident
        return self._identities[name]


def _ref_identity(ref: ComponentRef) -> str:
    if ref.hub_id is not None:
        revision = ref.revision or "main"
        commit = resolve_hub_revision(ref.hub_id, revision)
        return f"hub:{ref.hub_id}@{commit}" if commit else f"hub-unresolved:{ref.hub_id}@{revision}"
    return "files:" + hash_tree(ref.path)


def _location(path: Path, folder: Path, name: str, spec: dict, what: str) -> ComponentRef:
    """A ``{path: ...}`` or ``{hub: ..., revision: ...}`` mapping -> a reference (no settings)."""
    if "hub" in spec:
        revision = spec.get("revision")
        if not isinstance(spec["hub"], str) or not spec["hub"]:
            raise InputError(f"Model bundle {path}: {what} 'hub' must be a hub id such as org/model.")
        return ComponentRef(name, hub_id=spec["hub"], revision=None if revision is None else str(revision))
    if "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"]:
            raise InputError(f"Model bundle {path}: {what} 'path' must be a file or folder path.")
        p = Path(spec["path"]).expanduser()
        return ComponentRef(name, path=(p if p.is_absolute() else (folder / p)).resolve())
    raise InputError(f"Model bundle {path}: {what} needs 'path' or 'hub'.")


def _parse_component(path: Path, folder: Path, name: str, spec: Any) -> ComponentRef:
    """One entry of bundle.yaml's ``components`` (rules: this module's docstring)."""
    from mdream.script.models import SAMPLERS

    if not isinstance(spec, dict):
        raise InputError(f"Model bundle {path}: component {name!r} needs 'path' or 'hub'.")
    unknown = sorted(set(map(str, spec)) - _SPEC_KEYS)
    if unknown:
        raise InputError(f"Model bundle {path}: component {name!r} has unknown key(s) {', '.join(unknown)}.",
                         hint=f"a component takes {', '.join(sorted(_SPEC_KEYS))}")
    ref = _location(path, folder, name, spec, f"component {name!r}:")
    class_name = spec.get("class")
    if class_name is not None and (not isinstance(class_name, str) or not class_name):
        raise InputError(f"Model bundle {path}: component {name!r}: 'class' must be a class name.")
    dtype, steps, sampler, guidance, decode = (spec.get(k) for k in SETTING_KEYS)
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"Model bundle {path}: component {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    sampling_given = [k for k in ("steps", "sampler", "guidance") if spec.get(k) is not None]
    if sampling_given and name not in SAMPLING_COMPONENTS:
        raise InputError(f"Model bundle {path}: component {name!r} does not sample; {', '.join(sampling_given)} "
                         f"apply only to {' and '.join(SAMPLING_COMPONENTS)}.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000):
        raise InputError(f"Model bundle {path}: component {name!r}: steps must be a whole number from 1 to 1000.")
    if sampler is not None and sampler not in SAMPLERS:
        raise InputError(f"Model bundle {path}: component {name!r}: sampler {sampler!r} is not one of {', '.join(SAMPLERS)}.")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= 30):
        raise InputError(f"Model bundle {path}: component {name!r}: guidance must be a number from 0 to 30.")
    if decode is not None and name != "keyframe_ar":
        raise InputError(f"Model bundle {path}: component {name!r}: 'decode' applies only to keyframe_ar.")
    if decode is not None and decode not in DECODE_MODES:
        raise InputError(f"Model bundle {path}: component {name!r}: decode {decode!r} is not one of "
                         f"{', '.join(DECODE_MODES)}.")
    backbone = spec.get("backbone")
    if backbone is not None:
        if not isinstance(backbone, dict):
            raise InputError(f"Model bundle {path}: component {name!r}: 'backbone' must be a mapping with 'hub' or 'path'.")
        extra = sorted(set(map(str, backbone)) - {"hub", "revision", "path"})
        if extra:
            raise InputError(f"Model bundle {path}: component {name!r}: backbone has unknown key(s) {', '.join(extra)}.")
        backbone = _location(path, folder, name, backbone, f"component {name!r}: backbone")
    train = spec.get("train")
    return ComponentRef(
        name, path=ref.path, hub_id=ref.hub_id, revision=ref.revision, class_name=class_name, dtype=dtype,
        steps=steps, sampler=sampler, guidance=None if guidance is None else float(guidance), decode=decode,
        backbone=backbone, train=None if train is None else str(train),
    )


def bundle_candidates(name_or_path: str, base_dir: Path | None = None) -> list[Path]:
    """The folders where a bundle named ``name_or_path`` is looked for, in order."""
    def resolved(path: Path) -> Path:
        try:
            return path.expanduser().resolve()
        except (OSError, RuntimeError, ValueError):  # "~nobody", a symlink loop, a NUL character
            return path
    candidates = [resolved(base_dir / name_or_path)] if base_dir is not None else []
    return candidates + [resolved(Path(name_or_path)), BUNDLES_DIR / name_or_path]


def bundled_names() -> list[str]:
    """Names of the bundles shipped with mdream (``toy``, ...)."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "bundle.yaml").is_file())


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub finds it (read at call time, so a changed
    ``HF_HUB_CACHE`` / ``HF_HOME`` counts)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def resolve_hub_revision(repo_id: str, revision: str = "main") -> str | None:
    """The commit hash ``revision`` of model ``repo_id`` resolves to in the local hub cache.

    A 40-hex revision is already a commit. Otherwise the cache's ``refs/<revision>`` file (written by
    huggingface_hub when it downloaded that revision) holds it; None when nothing is cached. Never
    touches the network.
    """
    if _COMMIT_RE.match(revision):
        return revision
    from huggingface_hub.file_download import repo_folder_name

    ref = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except (OSError, ValueError):
        return None
    return commit if _COMMIT_RE.match(commit) else None


def hub_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The local snapshot folder of ``repo_id`` at ``revision`` (None when it is not downloaded)."""
    commit = resolve_hub_revision(repo_id, revision)
    if commit is None:
        return None
    from huggingface_hub.file_download import repo_folder_name

    folder = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit
    return folder if folder.is_dir() else None


def disk_size(path: Path) -> int:
    """Bytes on disk of a file or a folder's files (symlinks followed: a hub snapshot links to blobs)."""
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        for root, _, files in os.walk(path):
            for fname in files:
                with contextlib.suppress(OSError):
                    total += (Path(root) / fname).stat().st_size
        return total
    except OSError:
        return 0


def linked_folders(component: Path) -> list[Path]:
    """Local folders outside ``component`` that its top-level JSON files name by relative path."""
    if not component.is_dir():
        return []
    found: list[Path] = []
    for config in sorted(component.glob("*.json")):
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        for value in data.values() if isinstance(data, dict) else []:
            if not isinstance(value, str) or not value or Path(value).is_absolute():
                continue
            target = (component / value).resolve()
            inside = target == component.resolve() or component.resolve() in target.parents
            if target.is_dir() and not inside and target not in found:
                found.append(target)
    return found


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def hash_file(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) in this process and, between runs, in the
    persistent memo of :mod:`mdream.cache.hashes` (so big weights are read once, not once per run)."""
    from mdream.cache.hashes import persistent_memo

    path = Path(path)
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        memo = persistent_memo()
        digest = memo.get(path, st)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            memo.put(path, st, digest)
        _HASH_MEMO[memo_key] = digest
    return _HASH_MEMO[memo_key]


def hash_tree(path: Path) -> str:
    """sha256 over every file under ``path`` (names, sizes, contents); a file hashes as itself."""
    if path.is_file():
        return hash_file(path)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for fname in sorted(files):
            if fname.startswith("."):
                continue
            full = Path(root) / fname
            entries.append((str(full.relative_to(path)), hash_file(full)))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
