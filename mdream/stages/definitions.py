"""The pipeline's stages: what each shot's artifact depends on, and how it is made.

Each class registered with :func:`~mdream.stages.registry.register_stage` is a step of the pipeline,
in the order of this file: the CLI gets one command per per-shot stage, ``status`` one column, and
``--from-stage`` / ``--until`` take the names (``docs/architecture.md``, "Adding a stage").

Keys depend only on these declarations, so ``mdream status`` can tell done / stale / missing for
every stage, built or not. A stage whose model is not built yet fails in :meth:`prepare` with a
clear :class:`~mdream.errors.NotBuiltError` (exit 1), never silently. Stages load their models with
:meth:`~mdream.stages.pipeline.Stage.load_model` (the model registry picks the class; ``--offload`` keeps them
in CPU memory), and the runner releases them when the stage ends.

Heavy libraries (numpy, PIL, torch) are imported inside the methods: the CLI imports this module at
start-up to list the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdream.errors import InputError, NotBuiltError
from mdream.stages.options import resolve_device
from mdream.stages.pipeline import ArtifactSequence, MovieStep, Project, Stage
from mdream.stages.registry import register_stage

if TYPE_CHECKING:
    import numpy as np

    from mdream.cache import ArtifactWriter
    from mdream.script import PlannedShot

#: Face slots of the renderer's context, in this order; unpositioned cast members fill free slots.
FACE_SLOTS = ("left", "center", "right")


def sampling_defaults(decoder_folder, ref=None) -> tuple[int, float, float]:
    """(num_inference_steps, guidance_scale, identity_guidance_scale) saved with a decoder
    (``keyframe_decoder.json``'s ``sampling``), so each bundle renders with the settings it was tuned
    for; else (20, 2.0, 0.0). ``ref``: the bundle's component reference, whose ``steps`` and
    ``guidance`` (bundle.yaml) win over the saved ones."""
    import json

    try:
        sampling = json.loads((Path(decoder_folder) / "keyframe_decoder.json").read_text()).get("sampling") or {}
    except (OSError, ValueError):
        sampling = {}
    steps, guidance = sampling.get("num_inference_steps", 20), sampling.get("guidance_scale", 2.0)
    if ref is not None:
        steps = ref.steps if ref.steps is not None else steps
        guidance = ref.guidance if ref.guidance is not None else guidance
    return int(steps), float(guidance), float(sampling.get("identity_guidance_scale", 0.0))


def face_slots(shot: PlannedShot) -> list[str | None]:
    """Character id per face slot (left, center, right), None where the slot is empty."""
    slots: list[str | None] = [None] * len(FACE_SLOTS)
    loose = []
    for member in shot.cast:
        if member.position in FACE_SLOTS and slots[FACE_SLOTS.index(member.position)] is None:
            slots[FACE_SLOTS.index(member.position)] = member.id
        else:
            loose.append(member.id)
    for cid in loose:
        if None not in slots:
            raise InputError(f"Shot {shot.id!r} has more than {len(FACE_SLOTS)} characters; the renderer takes at most 3.")
        slots[slots.index(None)] = cid
    return slots


@register_stage
class EncodeStage(Stage):
    """Reference faces -> face embeddings per slot; descriptor and identifier -> text embeddings."""

    name = "encode"
    version = "2"  # 2: the cast's description embeddings per face slot
    help = "Encode a script's faces and descriptors."
    components = ("face_embedder", "text_encoder")

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        from mdream.models.bundle import hash_file

        # The face photos' *contents* matter, not just their names: replacing a photo re-encodes.
        faces = {cid: [hash_file(p) for p in project.plan.face_paths(cid)] for cid in shot.cast_ids}
        return {"shot": shot.inputs_for_cache(), "faces": faces}

    def prepare(self, project: Project) -> None:
        bundle = project.bundle
        self.faces = bundle.load("face_embedder")
        self.text = self.load_model(project, "text_encoder")
        self._character_embeddings: dict[str, np.ndarray] = {}
        self._character_texts: dict[str, object] = {}

    def character_embedding(self, project: Project, cid: str) -> np.ndarray:
        """The mean of a character's photo embeddings, renormalised: float32 [512]."""
        if cid not in self._character_embeddings:
            self._character_embeddings[cid] = self.faces.identity(project.plan.face_paths(cid))
        return self._character_embeddings[cid]

    def character_text(self, project: Project, cid: str):
        """A character's description through the text encoder: float32 tensor [D] (what a face cannot show)."""
        if cid not in self._character_texts:
            self._character_texts[cid] = self.text.encode([project.plan.characters[cid].description])[0]
        return self._character_texts[cid]

    def produce(self, project: Project, shot: PlannedShot, upstream: dict[str, Any], writer: ArtifactWriter) -> None:
        import numpy as np
        import torch

        slots = face_slots(shot)
        text = self.text.encode([shot.descriptor, shot.identifier])  # [2, D]
        faces = np.zeros((len(FACE_SLOTS), 512), np.float32)  # [3, 512]
        # each slot's character description, for renderers trained with it; zeros where the slot is empty
        described = torch.zeros(len(FACE_SLOTS), text.shape[-1])  # [3, D]
        for i, cid in enumerate(slots):
            if cid is not None:
                faces[i] = self.character_embedding(project, cid)
                described[i] = self.character_text(project, cid)
        writer.save_tensors(
            "conditioning",
            {
                "face_embeds": torch.from_numpy(faces),  # [3, 512]
                "face_mask": torch.tensor([cid is not None for cid in slots]),  # [3]
                "descriptor_embed": text[0].contiguous(),  # [D]
                "identifier_embed": text[1].contiguous(),  # [D]
                "character_text_embeds": described,  # [3, D]
            },
        )
        writer.save_json("slots", {"slots": slots})


def reference_frame_paths(project: Project) -> list[Path]:
    """The script's ``style.reference_frames``, resolved against its folder (empty without any)."""
    style = project.plan.style
    frames = style.reference_frames if style is not None else []
    return [(project.plan.root / frame).resolve() for frame in frames]


def reference_frame_error(project: Project, index: int, message: str, hint: str | None = None):
    """A :class:`~mdream.errors.ScriptError` located at ``style.reference_frames[index]`` of the script file."""
    from mdream.errors import Problem, ScriptError
    from mdream.script.loader import format_field_path
    from mdream.script.source import parse_document

    path = ("style", "reference_frames", index)
    location = None
    try:
        text = project.script_path.read_text(encoding="utf-8-sig")
        location = parse_document(text, is_json=project.script_path.suffix == ".json").source_map.locate(path)
    except (OSError, ValueError):
        pass
    line, column = location if location else (None, None)
    return ScriptError(problems=[Problem(str(project.script_path), line, column, format_field_path(path), message,
                                         hint)])


def _reference_problem(project: Project, index: int) -> tuple[str, str | None]:
    """Why reference frame ``index`` cannot be read now (the script's own file check, run again)."""
    from mdream.script.checks import check_image_file

    relative = str(project.plan.style.reference_frames[index])
    found = check_image_file(relative, project.plan.root, "reference frame")
    return found or (f"reference frame file '{relative}' could not be read", "use a PNG or JPEG image")


@register_stage
class KeyframesStage(Stage):
    """Each shot's keyframe tokens: a given keyframe is encoded; otherwise the AR model predicts it.

    Chained: a shot's tokens condition on the shots before it (``upstream["history"]``), so its key
    includes the previous key.

    Few-shot context: the script's ``style.reference_frames`` are encoded with the bundle's keyframe
    encoder and go into the AR model's fixed prefix (``KeyframeAR.start_movie(references=...)``),
    which the sliding window never drops. A predicted shot's key holds each reference file's content
    hash, so replacing a reference image recomputes the predicted shots (given ones keep their
    keys: their tokens are their own image's). A model trained without references
    (``max_references`` 0) leaves them out and says so.
    """

    name = "keyframes"
    version = "1"
    help = "Every shot's keyframe tokens: given keyframes encoded, the rest predicted in order."
    components = ("keyframe_ar", "keyframe_encoder")
    upstream_stages = ("encode",)
    chained = True

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        from mdream.models.bundle import hash_file

        given = hash_file(shot.keyframe) if shot.keyframe is not None else None
        inputs = {"shot": shot.inputs_for_cache(), "given_keyframe": given}
        if given is None:  # a predicted shot also depends on how it is sampled, and on the reference frames
            inputs["temperature"] = keyframe_temperature(project)
            references = self.reference_hashes(project)
            if references:
                inputs["reference_frames"] = references
        return inputs

    def reference_hashes(self, project: Project) -> list[str]:
        """The content hash of every reference frame (memoised per script: every predicted shot asks)."""
        from mdream.models.bundle import hash_file

        memo = getattr(self, "_reference_hashes", None)
        if memo is not None and memo[0] is project:
            return memo[1]
        hashes = []
        for i, path in enumerate(reference_frame_paths(project)):
            try:
                hashes.append(hash_file(path))
            except OSError:
                raise reference_frame_error(project, i, *_reference_problem(project, i)) from None
        self._reference_hashes = (project, hashes)
        return hashes

    def prepare(self, project: Project) -> None:
        import torch

        to_predict = [s.id for s in project.plan.shots if s.keyframe is None]
        ar = project.bundle.components.get("keyframe_ar")
        if to_predict and (ar is None or not ar.present):
            shown = ", ".join(to_predict[:5]) + (" ..." if len(to_predict) > 5 else "")
            raise NotBuiltError(
                f"The model bundle {project.bundle.name!r} has no keyframe AR model, and {len(to_predict)} shot(s) "
                f"have no given keyframe to encode instead ({shown}).",
                hint="use a bundle with a keyframe_ar component (`mdream train ar --export DIR`), or give every shot "
                     "a `keyframe:` image (e.g. `mdream toyworld script -o DIR --given-keyframes`)",
            )
        self.encoder = self.load_model(project, "keyframe_encoder")
        self.ar = self.load_model(project, "keyframe_ar").eval() if to_predict else None
        if self.ar is not None:
            cfg, enc = self.ar.config, self.encoder.compressor.config
            if (cfg.num_tokens, cfg.token_dim) != (enc.num_tokens, enc.token_dim):
                raise InputError(
                    f"The bundle's keyframe AR model predicts {cfg.num_tokens} tokens of {cfg.token_dim}, but its "
                    f"keyframe encoder makes {enc.num_tokens} of {enc.token_dim}.",
                    hint="train the AR model on tokens of this bundle's keyframe encoder",
                )
        self.temperature = keyframe_temperature(project)
        self.decode = self.decode_mode(project) if self.ar is not None else "dynamic"
        self.references = self.encode_references(project) if self.ar is not None else None  # [R, N, d] or None
        self.session = None  # the AR model's context: every shot so far, in plan order
        self.fed = 0  # shots in the session
        self._torch = torch

    def encode_references(self, project: Project):
        """The script's reference frames through the keyframe encoder: float32 ``[R, N, d]``, or None without any
        (or when the AR model was trained without references)."""
        import torch

        from mdream.images import read_rgb

        paths = reference_frame_paths(project)
        if not paths:
            return None
        trained = self.ar.config.max_references
        if trained == 0:
            self.notice(project, f"the keyframe AR model was trained without reference frames: the script's "
                                 f"{len(paths)} style.reference_frames are left out")
            return None
        if len(paths) > trained:
            self.notice(project, f"{len(paths)} reference frames, and the keyframe AR model was trained with up to "
                                 f"{trained}: all are used, the predictions may suffer")
        tokens = []
        for i, path in enumerate(paths):
            try:
                image = read_rgb(path, "reference frame")[None]  # [1, H, W, 3]
            except (InputError, OSError):
                raise reference_frame_error(project, i, *_reference_problem(project, i)) from None
            tokens.append(self.encoder.encode(image)[0].float().cpu())  # [N, d]
        references = torch.stack(tokens)  # [R, N, d]
        try:
            self.ar.start_movie(references)
        except InputError as exc:  # the prefix leaves no room for a shot in the model's window
            raise reference_frame_error(project, len(paths) - 1, f"{len(paths)} reference frames do not fit the "
                                        f"keyframe AR model's context: {exc.message}",
                                        f"use fewer reference frames (the model was trained with up to {trained})"
                                        ) from None
        return references

    def notice(self, project: Project, text: str) -> None:
        """A note on stderr (not in quiet runs)."""
        if not project.options.quiet:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]keyframes: {text}[/]", highlight=False)

    def new_session(self):
        """A fresh MovieSession of the AR model with the script's reference frames in its fixed prefix, through the KV
        cache the bundle names (``decode:``; CUDA graphs fall back to the dynamic cache where they cannot run)."""
        return self.ar.start_movie(self.references, decode=self.decode)

    def decode_mode(self, project: Project) -> str:
        """The bundle's ``decode`` for the AR model, or ``dynamic`` where CUDA graphs cannot run (with a notice)."""
        decode = project.bundle.component("keyframe_ar").decode or "dynamic"
        if decode == "graphs" and not self.ar.cuda_graphs_possible:
            where = "with --offload" if self.ar.device.type == "cuda" else f"on {self.ar.device.type}"
            self.notice(project, f"the bundle asks for CUDA graphs (decode: graphs), which do not run {where}: "
                                 "decoding with the dynamic KV cache")
            return "dynamic"
        return decode

    def _condition(self, shot: PlannedShot, encoded: Any):
        from mdream.models.keyframe_ar import ShotCondition

        return ShotCondition.from_conditioning(shot.identifier, encoded.load_tensors("conditioning"))

    def produce(self, project: Project, shot: PlannedShot, upstream: dict[str, Any], writer: ArtifactWriter) -> None:
        from mdream.images import read_rgb

        given = None
        if shot.keyframe is not None:
            image = read_rgb(shot.keyframe, "keyframe")[None]  # [1, H, W, 3]
            given = self.encoder.encode(image)[0].float().cpu()  # [N, d]
        if self.ar is None:  # every shot is given: nothing to predict, no context to keep
            writer.save_tensors("tokens", {"tokens": given.contiguous()})
            return
        if self.session is None or self.fed > shot.index:
            self.session, self.fed = self.new_session(), 0
        # Shots made earlier (this run or a run before) enter the context as they were, in order.
        earlier_encoded = upstream["upstream_history"]["encode"]
        for j in range(self.fed, shot.index):
            tokens = upstream["history"][j].load_tensors("tokens")["tokens"]  # [N, d]
            self.session.step(self._condition(project.plan.shots[j], earlier_encoded[j]), given=tokens)
        generator = self._torch.Generator().manual_seed(project.shot_seed(self.name, shot))
        tokens = self.session.step(self._condition(shot, upstream["encode"]), given=given,
                                   temperature=self.temperature, generator=generator)  # [N, d]
        self.fed = shot.index + 1
        writer.save_tensors("tokens", {"tokens": tokens.contiguous()})


#: Sampling temperature of predicted keyframe tokens when the script's output.sampling does not set one.
DEFAULT_KEYFRAME_TEMPERATURE = 1.0


def keyframe_temperature(project: Project) -> float:
    """The script's ``output.sampling.temperature``, else :data:`DEFAULT_KEYFRAME_TEMPERATURE`."""
    temperature = project.plan.output.sampling.temperature
    return DEFAULT_KEYFRAME_TEMPERATURE if temperature is None else float(temperature)


@register_stage
class RenderStage(Stage):
    """Keyframe tokens + cast face embeddings + descriptor -> keyframe image (PNG)."""

    name = "render"
    version = "1"
    help = "Render keyframes from tokens, faces and descriptors into the movie folder (or a tokens file to PNGs)."
    components = ("keyframe_decoder",)
    upstream_stages = ("keyframes", "encode")
    # Every batch is rendered at exactly batch_size images (a short batch padded with copies of its first shot,
    # drawn and thrown away): the convolutions' kernels, and so the last bit of a pixel, depend on the batch's shape
    # (a shot rendered alone and in a batch of 8 can differ by one grey level on some CPUs), not on its batch-mates
    # or its place in the batch, and a resumed or shared run forms other batches than an uninterrupted one.
    batch_size = 8

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        out = project.plan.output
        inputs: dict[str, Any] = {"width": out.width, "height": out.height}
        # the bundle's own sampling defaults are part of its fingerprint; the script's overrides go in here
        if overrides := out.sampling.overrides():
            inputs["sampling"] = overrides
        return inputs  # everything else arrives through upstream keys

    def prepare(self, project: Project) -> None:
        ref = project.bundle.component("keyframe_decoder")
        self.device = resolve_device(project.options.device)
        self.decoder = self.load_model(project, "keyframe_decoder")
        self.steps, self.guidance, self.identity_guidance = sampling_defaults(ref.location, ref)
        sampling = project.plan.output.sampling
        self.steps = sampling.steps if sampling.steps is not None else self.steps
        self.guidance = sampling.guidance_scale if sampling.guidance_scale is not None else self.guidance
        if sampling.identity_guidance is not None:
            self.identity_guidance = sampling.identity_guidance
        self.sampler = sampling.sampler or ref.sampler  # None: the decoder's own

    def produce_batch(self, project, shots, upstreams, writers) -> None:
        import torch
        from PIL import Image

        real, pad = len(shots), self.batch_size - len(shots)  # the first shot again, up to the fixed batch shape
        upstreams, shots = upstreams + upstreams[:1] * pad, shots + shots[:1] * pad
        tokens = torch.stack([u["keyframes"].load_tensors("tokens")["tokens"] for u in upstreams])  # [B, N, d]
        cond = [u["encode"].load_tensors("conditioning") for u in upstreams]
        faces = torch.stack([c["face_embeds"] for c in cond])  # [B, 3, 512]
        mask = torch.stack([c["face_mask"] for c in cond])  # [B, 3]
        text = torch.stack([c["descriptor_embed"] for c in cond])  # [B, D]
        described = torch.stack([c["character_text_embeds"] for c in cond])  # [B, 3, D]
        # One generator per shot: a shot's pixels depend on its own seed, not on its batch-mates.
        generators = [torch.Generator().manual_seed(project.shot_seed(self.name, s)) for s in shots]
        images = self.decoder.generate(
            tokens.to(self.device),
            faces.to(self.device),
            mask.to(self.device),
            text.to(self.device),
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            identity_guidance_scale=self.identity_guidance,
            generator=generators,
            scheduler=self.sampler,
            character_text=described.to(self.device),
        ).images  # uint8 [B, S, S, 3]
        out = project.plan.output
        for image, writer in zip(images[:real], writers, strict=True):
            img = Image.fromarray(image)
            if img.size != (out.width, out.height):
                img = img.resize((out.width, out.height), Image.Resampling.LANCZOS)
            writer.save_image("keyframe.png", img)


@register_stage
class ExportStep(MovieStep):
    """The movie folder (``docs/architecture.md``): every rendered keyframe, ``shots.json``, and the previews
    (``storyboard.png``, ``animatic.mp4``).

    A per-movie step: it runs after ``render`` (so a later failure still leaves the keyframes), and
    again only when a render key, the output settings or the target folder changed, or when a file it
    wrote is gone or was changed since.
    """

    name = "export"
    version = "2"  # 2: the storyboard and the animatic
    upstream_stages = ("render",)

    def produce_movie(self, project: Project, upstream: dict[str, ArtifactSequence], target: Path) -> list[Path]:
        from mdream.stages.movie import export_keyframes, write_previews

        return export_keyframes(project, upstream["render"], target) + write_previews(project, upstream["render"], target)


def clip_frame_count(duration: float, fps: int) -> int:
    """Frames of a shot's clip: ``round(duration * fps)``, at least one (the movie is then within one frame per
    shot of its running time x fps)."""
    return max(1, round(float(duration) * fps))


#: How a shot's clip is anchored when extended clip by clip (``mdream.models.video``).
VIDEO_ANCHOR = "first"


@register_stage
class VideoStage(Stage):
    """Keyframe -> the shot's clip (``clip.safetensors``: uint8 frames at the model's size), drawn clip by clip,
    each continuing clip starting from the last frame before it, cross-attention anchored on the first frame."""

    name = "video"
    version = "1"
    help = "Turn keyframes into clips anchored on their first frame."
    components = ("video",)
    upstream_stages = ("render",)

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        out = project.plan.output
        # the clip's frame count follows from duration and fps; its size and clip length are settings
        return {"shot": shot.inputs_for_cache(), "duration": shot.duration, "fps": out.fps,
                "clip_length": out.clip_length, "width": out.width, "height": out.height, "anchor": VIDEO_ANCHOR}

    def prepare(self, project: Project) -> None:
        from mdream.models.video import ImageToVideoPipeline

        ref = project.bundle.components.get("video")
        if ref is None or not ref.exists:
            where = ref.location if ref else "not listed in bundle.yaml"
            raise NotBuiltError(
                f"The model bundle {project.bundle.name!r} has no video model ({where}), so the video stage cannot "
                "turn keyframes into clips.",
                hint="train one with `mdream train video --config video-toy-action-map --export DIR` and name it as the "
                     "bundle's `video` component; meanwhile `mdream generate` writes the animatic as the movie",
            )
        # bundle.yaml's steps and guidance (SVD's largest guidance scale, reached at the clip's last frame) override
        # what the model's video.json records; bundle.yaml's settings are part of the component's identity, so of
        # the clips' keys
        sampling = project.bundle.sampling("video")
        if sampling["sampler"] != "euler":
            raise InputError(f"The model bundle {project.bundle.name!r} gives its video model the sampler "
                             f"{sampling['sampler']!r}, and the video model samples with Euler steps (SVD's sampler) "
                             "only.", hint="leave `sampler` out of the bundle's `video` component, or set it to euler")
        self.steps, self.guidance = sampling["steps"], sampling["guidance"]
        self.pipeline = ImageToVideoPipeline(self.load_model(project, "video"))

    def produce(self, project: Project, shot: PlannedShot, upstream: dict[str, Any], writer: ArtifactWriter) -> None:
        import numpy as np
        import torch
        from PIL import Image

        from mdream.models.video import action_vector

        config, out = self.pipeline.model.config, project.plan.output
        with Image.open(upstream["render"].path("keyframe.png")) as image:
            keyframe = image.convert("RGB").resize((config.width, config.height), Image.Resampling.LANCZOS)
        actions = action_vector(config, [(m.position, m.action) for m in shot.cast], shot.camera)[None]  # [1, A]
        generator = torch.Generator().manual_seed(project.shot_seed(self.name, shot))
        frames = self.pipeline(np.asarray(keyframe)[None], clip_frame_count(shot.duration, out.fps), actions=actions,
                               clip_length=out.clip_length, anchor=VIDEO_ANCHOR, fps=out.fps,
                               num_inference_steps=self.steps, max_guidance_scale=self.guidance,
                               generator=generator).frames[0]  # uint8 [T, h, w, 3]
        writer.save_tensors("clip", {"frames": torch.from_numpy(np.ascontiguousarray(frames))})


def pipeline_stages() -> list[Stage]:
    """The pipeline's steps in order (fresh instances: stages hold loaded models)."""
    from mdream.stages.registry import new_stages

    return new_stages()
