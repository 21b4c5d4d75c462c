"""The pipeline's stages: what each shot's artifact depends on.

Keys depend only on these declarations, so ``mdream status`` can tell done / stale / missing for
every stage, built or not. A stage whose model code is not built yet fails in :meth:`prepare` with
a clear :class:`~mdream.errors.NotBuiltError` (exit 1), never silently.
"""

from __future__ import annotations

from typing import Any

from mdream.errors import NotBuiltError
from mdream.models.bundle import hash_file
from mdream.script import PlannedShot
from mdream.stages.pipeline import Project, Stage


class _NotBuiltStage(Stage):
    issue: str = ""

    def prepare(self, project: Project) -> None:
        raise NotBuiltError(
            f"The {self.name} stage is not built yet ({self.issue}).",
            hint="`mdream status SCRIPT` shows what is cached; `mdream script-validate` checks the script",
        )


class EncodeStage(_NotBuiltStage):
    """Reference faces -> face embeddings; descriptor -> text embedding; style frames -> tokens."""

    name = "encode"
    components = ("face_embedder", "text_encoder", "keyframe_encoder")
    issue = "the keyframe tokenizer and encoders land with issue 4"

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        # The face photos' *contents* matter, not just their names: replacing a photo re-encodes.
        faces = {
            member.id: [hash_file(project.script.resolve(p)) for p in project.plan.characters[member.id].faces]
            for member in shot.cast
        }
        return {"shot": shot.inputs_for_cache(), "faces": faces}


class KeyframesStage(_NotBuiltStage):
    """Autoregressive keyframe tokens: each shot conditions on the ones before it."""

    name = "keyframes"
    components = ("keyframe_ar",)
    upstream_stages = ("encode",)
    chained = True
    issue = "the autoregressive keyframe model is a later issue"


class RenderStage(_NotBuiltStage):
    """Keyframe tokens + cast face embeddings + descriptor -> keyframe image."""

    name = "render"
    components = ("keyframe_decoder",)
    upstream_stages = ("keyframes", "encode")
    issue = "the ID-preserving renderer lands with issue 4"


class VideoStage(_NotBuiltStage):
    """Keyframe -> clip(s) anchored on the first frame."""

    name = "video"
    components = ("video",)
    upstream_stages = ("render",)
    issue = "the image-to-video model is a later issue"


def pipeline_stages() -> list[Stage]:
    """The stages in order (fresh instances: stages may hold loaded models)."""
    return [EncodeStage(), KeyframesStage(), RenderStage(), VideoStage()]
