"""What ``mdream models list`` and ``mdream models show`` report: bundles and their components.

Everything here looks at local files only (bundle folders, the local Hugging Face hub cache); it
never loads a model, never imports torch and never touches the network, so it answers at once on a
fresh machine where nothing is downloaded yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdream.errors import MdreamError
from mdream.models.bundle import (
    COMPONENT_NAMES,
    SAMPLING_COMPONENTS,
    ComponentRef,
    ModelBundle,
    bundled_names,
    disk_size,
    hub_snapshot,
)


@dataclass
class ComponentInfo:
    """One component of a bundle as ``models show`` lists it."""

    name: str
    class_name: str | None
    """The model class that loads it; None when it is recorded in files that are not here yet."""
    source: str
    """``path`` or ``hub``."""
    location: str
    """The local path, or ``ID@REVISION`` for a hub id."""
    present: bool
    """Usable without the network (the path exists / the hub revision is in the local cache)."""
    size_bytes: int
    """Bytes on disk (0 when absent); a hub snapshot counts the blobs it links to."""
    dtype: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    """Sampling defaults (steps, guidance, sampler) of a sampling component, else empty."""
    backbone: dict[str, Any] | None = None
    """The pretrained model it is built on: ``{location, present, size_bytes}``."""
    train: str | None = None
    """How a user makes it, when bundle.yaml says."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BundleInfo:
    """A bundle: where it is and, per component, what ``models show`` reports."""

    name: str
    file: str
    builtin: bool
    components: list[ComponentInfo]

    @property
    def present(self) -> int:
        return sum(c.present for c in self.components)

    @property
    def size_bytes(self) -> int:
        return sum(c.size_bytes + ((c.backbone or {}).get("size_bytes") or 0) for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "builtin": self.builtin, "present": self.present,
                "listed": len(self.components), "size_bytes": self.size_bytes,
                "components": [c.to_dict() for c in self.components]}


def _where(ref: ComponentRef) -> tuple[str, str, int]:
    """(source, location, size on disk) of a reference."""
    if ref.hub_id is not None:
        snapshot = hub_snapshot(ref.hub_id, ref.revision or "main")
        return "hub", f"{ref.hub_id}@{ref.revision or 'main'}", disk_size(snapshot) if snapshot else 0
    assert ref.path is not None
    return "path", str(ref.path), disk_size(ref.path) if ref.path.exists() else 0


def _class_of(bundle: ModelBundle, ref: ComponentRef) -> str | None:
    if ref.class_name:
        return ref.class_name
    if not ref.present:
        return None
    try:
        return bundle.class_name(ref.name)
    except MdreamError:
        return None


def component_info(bundle: ModelBundle, name: str) -> ComponentInfo:
    """What ``models show`` reports about one listed component."""
    ref = bundle.components[name]
    source, location, size = _where(ref)
    backbone = None
    if ref.backbone is not None:
        _, b_location, b_size = _where(ref.backbone)
        backbone = {"location": b_location, "source": "hub" if ref.backbone.hub_id else "path",
                    "present": ref.backbone.present, "size_bytes": b_size}
    sampling = {}
    if name in SAMPLING_COMPONENTS:
        sampling = {k: v for k, v in bundle.sampling(name).items() if v is not None}
    return ComponentInfo(name, _class_of(bundle, ref), source, location, ref.present, size, ref.dtype, sampling,
                         backbone, ref.train)


def bundle_info(bundle: ModelBundle) -> BundleInfo:
    """Every listed component of ``bundle``, in pipeline order."""
    names = [n for n in COMPONENT_NAMES if n in bundle.components]
    builtin = bundle.file is not None and bundle.file.parent.name in bundled_names() and \
        bundle.file.parent.parent == _builtin_dir()
    return BundleInfo(bundle.name, str(bundle.file or bundle.root / "bundle.yaml"), builtin,
                      [component_info(bundle, n) for n in names])


def _builtin_dir() -> Path:
    from mdream.models.bundle import BUNDLES_DIR

    return BUNDLES_DIR


def list_bundles(paths: list[Path] | None = None) -> list[BundleInfo]:
    """The built-in bundles, then the bundles at ``paths`` (folders holding bundle.yaml, or YAML files)."""
    found = [ModelBundle.find(name) for name in bundled_names()]
    found += [ModelBundle.find(str(path)) for path in paths or []]
    return [bundle_info(b) for b in found]


def show_bundle(name_or_path: str) -> BundleInfo:
    """One bundle by built-in name, folder or YAML file path."""
    return bundle_info(ModelBundle.find(name_or_path))


def human_size(size: int) -> str:
    """``1.2 GB``-style size (powers of 1000, as the hub shows them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
