"""The model registry: bundle components are loaded by their recorded class name.

A component folder records its class in its config (``keyframe_decoder.json``'s ``_class_name``:
``KeyframeDecoder``); :meth:`mdream.models.bundle.ModelBundle.load` reads that name (rules:
:func:`mdream.models.bundle.ModelBundle.class_name`) and calls the registered class's
``from_pretrained(location)`` (or, for a class without one, ``cls(location)``).

A class registers itself where it is defined::

    @register_model("KeyframeAR")
    class KeyframeAR(torch.nn.Module): ...

and :data:`KNOWN_MODULES` names the module that defines each known class, so the registry imports
it only when a bundle asks for that class: importing this module never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from mdream.errors import InputError

T = TypeVar("T")

#: Class name -> the module that defines (and registers) it; imported on first use.
KNOWN_MODULES: dict[str, str] = {
    "KeyframeEncoder": "mdream.models.encoders",
    "TextEncoder": "mdream.models.encoders",
    "KeyframeDecoder": "mdream.models.decoder",
    "FaceIdentityEmbedder": "mdream.models.face_embedder",
    "KeyframeAR": "mdream.models.keyframe_ar",
    "ImageToVideoModel": "mdream.models.video",
}

_REGISTRY: dict[str, type] = {}


def register_model(name: str | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` loadable by ``name`` (default: the class's own name)."""

    def decorate(cls: type[T]) -> type[T]:
        key = name or cls.__name__
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"model class name {key!r} is registered twice ({_REGISTRY[key]!r} and {cls!r})")
        _REGISTRY[key] = cls
        return cls

    return decorate


def known_classes() -> list[str]:
    """Every class name a bundle may name (registered, or known by module)."""
    return sorted(set(_REGISTRY) | set(KNOWN_MODULES))


def model_class(name: str, component: str) -> type:
    """The class registered as ``name``; InputError naming ``component`` and the known classes otherwise."""
    if name not in _REGISTRY and name in KNOWN_MODULES:
        module = importlib.import_module(KNOWN_MODULES[name])
        if name not in _REGISTRY:  # a module that defines (or re-exports) the class without registering it
            _REGISTRY[name] = getattr(module, name)
    if name not in _REGISTRY:
        raise InputError(
            f"The bundle's {component} component names model class {name!r}, which mdream does not know.",
            hint=f"known classes: {', '.join(known_classes())}; set `class:` for the component in bundle.yaml, "
            "or register the class with mdream.models.registry.register_model",
        )
    return _REGISTRY[name]


def load_model(name: str, location: str, component: str, device: str | None = None) -> Any:
    """Load ``location`` with the class registered as ``name`` and move it to ``device`` (if it moves)."""
    cls = model_class(name, component)
    loader = getattr(cls, "from_pretrained", None)
    model = loader(location) if loader is not None else cls(location)
    if device is not None and callable(getattr(model, "to", None)):
        model = model.to(device) or model
    return model
