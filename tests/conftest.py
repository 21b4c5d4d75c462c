"""Shared fixtures: a small valid script on disk (with face photos) that tests can edit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# Tests run on 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# mdream's per-user folder (the remembered file hashes): a fresh one per test session.
os.environ.setdefault("MDREAM_HOME", tempfile.mkdtemp(prefix="mdream-home-"))


def write_face(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((32, 32, 3), colour, dtype=np.uint8)
    img[10:14, 8:12] = 0
    img[10:14, 20:24] = 0
    Image.fromarray(img).save(path)


def small_script_dict(n_shots: int = 6) -> dict:
    shots = []
    for i in range(n_shots):
        cast = [{"id": "ada", "position": "left", "action": "walk"}] if i % 2 == 0 else [
            {"id": "bo", "position": "right", "expression": "happy"}
        ]
        shots.append(
            {
                "scene": "harbor" if i < n_shots // 2 else "forest",
                "characters": cast,
                "identifier": f"shot {i}",
                "descriptor": f"Detailed description of shot {i}.",
                "camera": ["wide", "medium", "close-up"][i % 3],
                "duration": 2.0,
            }
        )
    return {
        "schema_version": 1,
        "title": "Test Movie",
        "seed": 7,
        "characters": [
            {"id": "ada", "name": "Ada", "description": "a woman with red hair", "faces": ["faces/ada.png"]},
            {"id": "bo", "name": "Bo", "description": "a man with a blue coat", "faces": ["faces/bo.png"]},
        ],
        "scenes": [
            {"id": "harbor", "description": "a harbor at dusk"},
            {"id": "forest", "description": "a forest at noon"},
        ],
        "arcs": [{"id": "act1", "shots": shots}],
        "output": {"width": 64, "height": 64, "fps": 8, "clip_length": 8, "model_bundle": "toy"},
    }


def write_script(folder: Path, data: dict, name: str = "script.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_face(folder / "faces" / "ada.png", (200, 150, 120))
    write_face(folder / "faces" / "bo.png", (120, 90, 60))
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def small_script(tmp_path: Path) -> Path:
    """A valid 6-shot script with two characters and their face photos."""
    return write_script(tmp_path / "movie", small_script_dict())


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """The stage registry holding the fake stages of pipeline_fakes (registered the way a new stage is), not the
    built-in ones; returns their names in order. The fake video stage stands for a video model that is not built, so
    the shipped toy bundle (which may ship one) has its ``video`` component at a path that does not exist meanwhile."""
    import dataclasses

    from pipeline_fakes import FakeChained, FakeEncode, FakeRender, FakeVideo

    from mdream.models.bundle import BUNDLES_DIR, ModelBundle
    from mdream.stages import registry
    from mdream.stages.definitions import ExportStep

    opened = ModelBundle._from_folder.__func__

    def without_video(cls, folder, path=None):
        bundle = opened(cls, folder, path)
        video = bundle.components.get("video")
        if Path(folder).resolve() == (BUNDLES_DIR / "toy").resolve() and video is not None:
            bundle.components["video"] = dataclasses.replace(video, path=tmp_path / "video-model-not-built")
        return bundle

    monkeypatch.setattr(ModelBundle, "_from_folder", classmethod(without_video))
    monkeypatch.setattr(registry, "_PIPELINE", [])
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ())
    for cls in (FakeEncode, FakeChained, FakeRender, ExportStep, FakeVideo):
        registry.register_stage(cls)
    return registry.stage_names()
