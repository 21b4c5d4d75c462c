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

A component is a local path (relative to the bundle folder, or absolute) or a hub id
(``{hub: stabilityai/stable-diffusion-xl-base-1.0, revision: main}``); both sizes go through the
same ``from_pretrained`` code. A component's *identity* (config + weight hashes, or hub id +
revision) enters the cache key of every stage that uses it, so retraining a model invalidates
exactly the artifacts it produced.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class ComponentRef:
    """Where one component lives: a local path or a hub id."""

    name: str
    path: Path | None = None
    hub_id: str | None = None
    revision: str | None = None

    @property
    def exists(self) -> bool:
        return self.hub_id is not None or (self.path is not None and self.path.exists())

    @property
    def location(self) -> str:
        return self.hub_id if self.hub_id else str(self.path)


@dataclass
class ModelBundle:
    """A loaded ``bundle.yaml``: component references plus their identities."""

    name: str
    root: Path
    components: dict[str, ComponentRef] = field(default_factory=dict)
    _identities: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, name_or_path: str, base_dir: Path | None = None) -> ModelBundle:
        """Find a bundle by bundled name (``toy``) or by folder path (relative to ``base_dir``)."""
        candidates = bundle_candidates(name_or_path, base_dir)
        for folder in candidates:
            if (folder / "bundle.yaml").is_file():
                return cls._from_folder(folder)
        known = bundled_names()
        raise InputError(
            f"Model bundle {name_or_path!r} was not found (looked for bundle.yaml in: "
            + ", ".join(str(c) for c in candidates) + ").",
            hint=f"use a bundled name ({', '.join(known) or 'none installed'}) or a folder holding bundle.yaml",
        )

    @classmethod
    def _from_folder(cls, folder: Path) -> ModelBundle:
        path = folder / "bundle.yaml"
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
            if not isinstance(spec, dict) or not ({"path", "hub"} & spec.keys()):
                raise InputError(f"Model bundle {path}: component {name!r} needs 'path' or 'hub'.")
            if "hub" in spec:
                components[name] = ComponentRef(name, hub_id=str(spec["hub"]), revision=spec.get("revision"))
            else:
                p = Path(spec["path"])
                components[name] = ComponentRef(name, path=(p if p.is_absolute() else (folder / p)).resolve())
        return cls(name=str(data.get("name", folder.name)), root=folder, components=components)

    def component(self, name: str) -> ComponentRef:
        """The reference of a component that must exist; NotBuiltError otherwise."""
        ref = self.components.get(name)
        if ref is None or not ref.exists:
            where = ref.location if ref else "not listed in bundle.yaml"
            raise NotBuiltError(
                f"The model bundle {self.name!r} has no {name} component yet ({where}).",
                hint="train it with `mdream train ...` or point the script's output.model_bundle at a bundle that has it",
            )
        return ref

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
            elif ref.hub_id is not None:
                ident = f"hub:{ref.hub_id}@{ref.revision or 'main'}"
            else:
                ident = "files:" + hash_tree(ref.path)
                # A component may name another folder it loads (the keyframe encoder's CLIP vision
                # tower): retraining that folder must invalidate this component's artifacts too.
                for linked in linked_folders(ref.path):
                    ident += f"+{linked.name}:" + hash_tree(linked)
            self._identities[name] = ident
        return self._identities[name]


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
    """sha256 of a file, memoised on (path, size, mtime) so big weights are hashed once per process."""
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_MEMO[memo_key] = h.hexdigest()
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
