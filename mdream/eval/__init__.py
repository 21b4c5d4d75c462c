"""The evaluator: score a generated movie against its script, offline.

    from mdream.eval import evaluate_movie
    report = evaluate_movie("movie/", "script.yaml")            # toy backend, shipped weights
    report = evaluate_movie("movie/", "script.yaml", frames="clips")   # the moving frames (movie.mp4 beside movie/)
    report = evaluate_movie("movie/", "script.yaml", backend="real",
                            clip_model="openai/clip-vit-base-patch32", face_model="glintr100.onnx")

- :mod:`mdream.eval.face_embedder`: the toy ArcFace-style face-identity network, exported as an
  insightface recognition ONNX; :class:`~mdream.models.face_embedder.FaceIdentityEmbedder` loads
  toy and real models alike.
- :mod:`mdream.eval.frame_analyser`: scene + who-is-where classifier, and the toy-FID features.
- :mod:`mdream.eval.motion_reader`: a shot's clip -> each slot's action and the camera's motion
  (``evaluate_movie(..., frames="clips")``; trained by ``mdream train motion-reader``, :mod:`mdream.training.motion_reader`).
- :mod:`mdream.eval.metrics`: the metrics as pure functions.
- :mod:`mdream.eval.evaluate`: :func:`evaluate_movie` and :class:`EvalReport`.
- :mod:`mdream.eval.toy_samples`: random toy shots and square face crops (the trainers of the evaluator's
  models, ``mdream train analyser`` and ``mdream train face-embedder``, live in :mod:`mdream.training.analyser`).
"""

from __future__ import annotations

from mdream.eval.evaluate import EvalReport, ShotResult, evaluate_movie
from mdream.eval.frame_analyser import FrameAnalyser, FrameAnalyserConfig
from mdream.eval.motion_reader import MotionReader, MotionReaderConfig
from mdream.models.face_embedder import FaceIdentityEmbedder

__all__ = [
    "EvalReport",
    "FaceIdentityEmbedder",
    "FrameAnalyser",
    "FrameAnalyserConfig",
    "MotionReader",
    "MotionReaderConfig",
    "ShotResult",
    "evaluate_movie",
]
