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
