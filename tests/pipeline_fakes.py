"""A stand-in stage for testing the runner and `status` without models.

Only the *compute* is fake: the runner, cache, locks, keys and status under test are the real ones.
"""

from __future__ import annotations

import os
import time

import torch

from mdream.stages.pipeline import Stage


class FakeEncode(Stage):
    """Writes a small tensor per shot; optionally sleeps and logs each production."""

    name = "encode"

    def __init__(self, sleep: float = 0.0, log: str | None = None):
        self.sleep = sleep
        self.log = log

    def produce(self, project, shot, upstream, writer):
        time.sleep(self.sleep)
        writer.save_tensors("emb", {"x": torch.full((4,), float(shot.index))})
        if self.log:
            with open(self.log, "a") as f:  # O_APPEND: lines from several processes never interleave
                f.write(f"{os.getpid()} {shot.id}\n")


class FakeKeyframes(Stage):
    """A chained stage: each shot's value is the previous shot's plus its encode value."""

    name = "keyframes"
    upstream_stages = ("encode",)
    chained = True

    def produce(self, project, shot, upstream, writer):
        x = upstream["encode"].load_tensors("emb")["x"]
        if "previous" in upstream:
            x = x + upstream["previous"].load_tensors("tokens")["x"]
        writer.save_tensors("tokens", {"x": x})


class BatchedEncode(FakeEncode):
    """Produces shots in batches; records the batch sizes; can fail on a chosen shot."""

    batch_size = 4

    def __init__(self, fail_on: str | None = None):
        super().__init__()
        self.batches: list[int] = []
        self.fail_on = fail_on

    def produce_batch(self, project, shots, upstreams, writers):
        self.batches.append(len(shots))
        if self.fail_on in [s.id for s in shots]:
            raise RuntimeError("boom")
        super().produce_batch(project, shots, upstreams, writers)


class FakeChained(Stage):
    """A chained stage that records, per shot, the values of the whole history it was given."""

    name = "keyframes"
    upstream_stages = ("encode",)
    chained = True

    def __init__(self):
        self.seen: dict[str, list[float]] = {}

    def produce(self, project, shot, upstream, writer):
        history = upstream.get("history", [])
        self.seen[shot.id] = [art.load_tensors("tokens")["x"][0].item() for art in history]
        if history:
            assert upstream["previous"].key == history[-1].key
        writer.save_tensors("tokens", {"x": torch.full((2,), 10.0 * shot.index)})


class FakeRender(Stage):
    """Writes a tiny keyframe PNG per shot, coloured by the shot's index."""

    name = "render"
    upstream_stages = ("encode",)

    def shot_inputs(self, project, shot):
        out = project.plan.output
        return {"width": out.width, "height": out.height}

    def produce(self, project, shot, upstream, writer):
        from PIL import Image

        writer.save_image("keyframe.png", Image.new("RGB", (8, 8), (10 * shot.index, 0, 0)))


class FakeVideo(Stage):
    """A stage whose model is not built."""

    name = "video"
    upstream_stages = ("render",)

    def prepare(self, project):
        from mdream.errors import NotBuiltError

        raise NotBuiltError("The fake video stage is not built.")
