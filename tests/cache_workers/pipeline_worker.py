"""A batch worker: runs `generate` on one script over the fake pipeline, logging every production.

    python pipeline_worker.py SCRIPT MOVIE CACHE LOG GO [SLEEP]

The pipeline is tests/pipeline_fakes.py's stages (encode, chained keyframes, render) plus the real
export step, registered the way a new stage is. Each production appends ``<stage> <shot> <pid>`` to
LOG (O_APPEND: lines from several processes never interleave). The worker starts once the file GO
exists, so that several workers begin together. Only the compute is fake: runner, cache, locks and
keys are the real ones.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_fakes import FakeEncode, FakeKeyframes, FakeRender  # noqa: E402

from mdream.stages import registry  # noqa: E402
from mdream.stages.definitions import ExportStep  # noqa: E402
from mdream.stages.options import RunOptions  # noqa: E402
from mdream.stages.run import generate  # noqa: E402

LOG = Path(sys.argv[4])
SLEEP = float(sys.argv[6]) if len(sys.argv) > 6 else 0.05


def logged(cls):
    class Logged(cls):
        def produce(self, project, shot, upstream, writer):
            time.sleep(SLEEP)
            super().produce(project, shot, upstream, writer)
            with open(LOG, "a") as f:
                f.write(f"{self.name} {shot.id} {os.getpid()}\n")

    Logged.__name__ = Logged.__qualname__ = cls.__name__
    return Logged


def main() -> int:
    script, movie, cache, _, go = sys.argv[1:6]
    registry._PIPELINE.clear()
    registry.BUILTIN_MODULES = ()
    for cls in (logged(FakeEncode), logged(FakeKeyframes), logged(FakeRender), ExportStep):
        registry.register_stage(cls)
    while not Path(go).exists():
        time.sleep(0.01)
    result = generate(script, Path(movie), RunOptions(cache_dir=Path(cache), quiet=True), until="export")
    print(" ".join(f"{r.stage}:{len(r.produced)}/{len(r.reused)}/{len(r.by_other_process)}" for r in result.reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
