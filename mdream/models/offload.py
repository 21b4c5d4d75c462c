"""Model CPU offload (``--offload``): a stage's models wait in CPU memory; each large part moves to the device
only while it runs.

The scheme is diffusers' ``enable_model_cpu_offload``, over every component a stage loads: each model class names
its large sub-models in ``offload_units`` (a UNet, a VAE, an image or text tower, a transformer backbone), and an
:class:`OffloadGroup` gives each of them an accelerate hook. When a unit's ``forward`` is called (or a method that
diffusers decorates with ``apply_forward_hook``, such as a VAE's ``decode``), the hook moves the unit that is on
the device back to the CPU, moves this one to the device, and sends the call's tensors there. Everything outside
the units (projectors, heads, small encoders) stays on the device. So the device holds one unit at a time, plus
the small parts and the activations: the peak is set by the largest unit, not by the stage's models together.

A model's own code reads where it computes from :func:`execution_device` (not from its parameters, which may be
on the CPU between calls), and calls :func:`onload` before it touches a unit's weights without calling the
unit (an embedding table looked up directly).
"""

from __future__ import annotations

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device

#: Keyword arguments that stay where they are: a KV cache lives where the forward that made it put it.
CACHE_KEYS = ("past_key_values", "past_key_value", "cache", "cache_params")


def execution_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where ``model`` computes: its offload group's device when it is offloaded, else ``fallback`` (where its
    parameters are)."""
    group = getattr(model, "_offload_group", None)
    return group.device if group is not None else fallback


def onload(module: torch.nn.Module) -> None:
    """Move an offloaded unit onto the execution device now (nothing when ``module`` has no offload hook)."""
    hook = getattr(module, "_hf_hook", None)
    if isinstance(hook, UnitOffloadHook):
        hook.group.onload(hook.name)


def offload_units(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's large parts that take turns on the device: attribute name -> sub-model (its ``offload_units``
    that are present and hold weights)."""
    units = {}
    for attr in getattr(model, "offload_units", ()):
        unit = getattr(model, attr, None)
        if isinstance(unit, torch.nn.Module) and next(unit.parameters(), None) is not None:
            units[attr] = unit
    return units


class UnitOffloadHook(ModelHook):
    """accelerate hook on one unit: before its forward, the group makes it the unit on the device."""

    def __init__(self, group: OffloadGroup, name: str):
        self.group, self.name = group, name

    def init_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to("cpu")

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.group.onload(self.name)
        device = self.group.device
        return send_to_device(args, device), send_to_device(kwargs, device, skip_keys=list(CACHE_KEYS))


class OffloadGroup:
    """The models of one stage, offloaded together: at most one of their units is on ``device`` at a time.

    ``add`` takes a model loaded on the CPU; ``release`` puts every unit back on the CPU and removes the hooks.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.units: dict[str, torch.nn.Module] = {}
        self.resident: str | None = None  # the unit on the device now
        self.moves = 0  # units moved onto the device so far
        self.models: list[torch.nn.Module] = []

    def add(self, name: str, model: torch.nn.Module) -> torch.nn.Module:
        """Offload ``model`` (the component ``name``): hook its ``offload_units``, move the rest to the device."""
        units = {f"{name}.{attr}": unit for attr, unit in offload_units(model).items()}
        for unit_name, unit in units.items():
            add_hook_to_module(unit, UnitOffloadHook(self, unit_name))  # init_hook: on the CPU
            self.units[unit_name] = unit
        _move_except(model, self.device, {id(u) for u in units.values()})
        model._offload_group = self
        self.models.append(model)
        return model

    def onload(self, name: str) -> None:
        """Make unit ``name`` the one on the device (the previous one goes back to the CPU first)."""
        if self.resident == name:
            return
        if self.resident is not None:
            self.units[self.resident].to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.units[name].to(self.device)
        self.resident = name
        self.moves += 1

    def release(self) -> None:
        """Every unit back on the CPU, hooks removed (the models then compute wherever their parameters are)."""
        for unit in self.units.values():
            remove_hook_from_module(unit)
            unit.to("cpu")
        for model in self.models:
            model.__dict__.pop("_offload_group", None)
        self.units.clear()
        self.models.clear()
        self.resident = None


def _move_except(module: torch.nn.Module, device: torch.device, skip: set[int]) -> None:
    """Move ``module``'s parameters and buffers to ``device``, except those inside the sub-modules in ``skip``."""
    if id(module) in skip:
        return
    for child in module.children():
        _move_except(child, device, skip)
    module._apply(lambda t: t.to(device), recurse=False)  # what Module.to does, for this module's own tensors

