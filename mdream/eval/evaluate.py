"""``evaluate_movie``: score a generated movie folder against its script.

    report = evaluate_movie("movie/", "script.yaml")            # toy backend, shipped weights
    print(report.to_dict())

Backends:

* ``toy`` (default): the shipped frame analyser (scene + who is where, and the features of the
  toy-FID and diversity) and the shipped toy face-identity embedder. Faces are cut where the toy
  world draws them (``face_boxes`` of the script's layout). Shots or characters that are not part of
  the analyser's toy world give n/a. With an analyser that reads the toy world's hidden state (each
  scene's palette, each character's trousers: constant over an episode, never in the script), also
  the continuity of that state: how often two shots of one scene read the same palette, and two
  appearances of one character (close-ups skipped) the same trousers, for consecutive pairs
  (short-term) and pairs 20+ shots apart (long-term).
* ``real``: a transformers CLIP model (``clip_model``: hub id or folder) gives the CLIP score and the
  diversity features; an insightface recognition ONNX (``face_model``) gives identity. Without a
  face detector, faces are cut from the part of the frame where the script puts the character
  (left/center/right third, upper part); scene/cast accuracy and toy-FID are n/a.

Frames (``frames``):

* ``keyframes`` (default): MOVIE_DIR/keyframes/NNNN.png, one frame per shot.
* ``clips``: the movie's moving frames, one clip per shot (see :func:`load_clips`). The frame metrics above are
  scored on the first, middle and last frame of every shot (each sample scored like a set of keyframes, then the
  three averaged; pair counts summed), and the toy backend's motion reader reads every whole clip: motion agreement
  (the share of cast members whose scripted action it reads at their position) and camera agreement. Held keyframes
  (the animatic) are its floor, ground-truth clips its ceiling.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mdream.errors import InputError
from mdream.eval import metrics
from mdream.images import read_rgb
from mdream.models.face_embedder import FACE_SIZE, FaceIdentityEmbedder

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval"
TOY_FACE_MODEL = ASSETS_DIR / "toy_face_recognition.onnx"
TOY_ANALYSER = ASSETS_DIR / "frame_analyser"
TOY_MOTION_READER = ASSETS_DIR / "motion_reader"
FRAME_SOURCES = ("keyframes", "clips")
SAMPLE_POINTS = ("first", "middle", "last")
"""Where in every shot's clip the frame metrics look (``frames="clips"``)."""
BACKENDS = ("toy", "real")
POSITIONS = ("left", "center", "right")
TOY_FRAME_SIZES = (32, 64, 128)


@dataclass
class ShotResult:
    """What the evaluator saw in one shot."""

    index: int
    id: str
    scene: str
    predicted_scene: str | None = None
    """The analyser's scene (toy backend; None if the shot's scene is not in the toy world)."""
    cast: dict[str, str | None] = field(default_factory=dict)
    """Script: position -> character id (None: empty)."""
    predicted_cast: dict[str, str | None] = field(default_factory=dict)
    """Analyser: position -> character id (None: empty)."""
    clip_score: float | None = None
    faces: int = 0
    """Face crops taken from this shot."""
    predicted_palette: int | None = None
    """The scene's hidden palette the analyser reads (index into the toy world's PALETTES; toy backend, an
    analyser with hidden-state heads, shots whose scene is in the toy world)."""
    predicted_trousers: dict[str, int] = field(default_factory=dict)
    """Character id -> the trouser colour read where it stands (index into TROUSER_COLOURS); only the
    characters whose trousers count for continuity (not in close-ups, where the legs are out of frame)."""
    predicted_actions: dict[str, str | None] = field(default_factory=dict)
    """The motion reader: position -> the action read in the shot's clip (None: nobody there); clips only."""
    predicted_camera: str | None = None
    """The motion reader's camera (a script camera, or ``still``); clips only."""


@dataclass
class EvalReport:
    """Scores of one movie against its script. ``None`` means n/a (nothing to measure)."""

    backend: str
    movie_dir: str
    script: str
    n_shots: int
    scene_accuracy: float | None = None
    """Fraction of shots whose predicted scene is the script's scene (toy)."""
    cast_accuracy: float | None = None
    """Fraction of the script's (character, position) slots where the analyser sees that character (toy)."""
    slot_accuracy: float | None = None
    """Fraction of all left/center/right slots predicted right, empty ones included (toy)."""
    cast_set_accuracy: float | None = None
    """Fraction of shots whose predicted set of characters equals the script's (toy)."""
    clip_score: float | None = None
    """Mean 100 * max(cos(image, descriptor), 0) (real)."""
    identity_short_term: float | None = None
    """Mean cosine of a character's faces in consecutive appearances."""
    identity_long_term: float | None = None
    """Mean cosine of a character's faces in appearances 20+ shots apart."""
    identity_margin: float | None = None
    """Same-character minus different-character mean cosine (0 when faces carry no identity)."""
    identity_accuracy: float | None = None
    """Fraction of faces whose nearest script reference photo is the right character."""
    toy_fid: float | None = None
    """Frechet distance of analyser features, movie vs ground-truth renders of the same shots (toy)."""
    diversity: float | None = None
    """Mean pairwise distance of keyframe features (analyser for toy, CLIP for real)."""
    copy_fraction: float | None = None
    """Fraction of keyframe pairs of different shots that are near-identical."""
    palette_continuity_short_term: float | None = None
    """Fraction of a scene's consecutive shots whose hidden palette reads the same (toy, hidden-state analyser)."""
    palette_continuity_long_term: float | None = None
    """Fraction of pairs of shots of one scene 20+ shots apart whose palette reads the same."""
    trousers_continuity_short_term: float | None = None
    """Fraction of a character's consecutive appearances (close-ups skipped) whose trousers read the same."""
    trousers_continuity_long_term: float | None = None
    """Fraction of pairs of a character's appearances 20+ shots apart (close-ups skipped) whose trousers read the same."""
    motion_agreement: float | None = None
    """Fraction of (shot, cast member) whose scripted action the motion reader reads at the member's position in the
    shot's clip (toy, ``frames="clips"``; actions outside the reader's vocabulary skipped)."""
    camera_agreement: float | None = None
    """Fraction of shots whose camera (wide pans, medium / close-up zoom in) the motion reader reads in the clip."""
    continuity_unavailable: str | None = None
    """Why the continuity of the hidden state is not measured (None: it is, or nothing to measure)."""
    frames: str = "keyframes"
    """What was scored: ``keyframes`` (one frame per shot) or ``clips`` (sampled frames of every shot's clip)."""
    clips_source: str | None = None
    """Where the clips were read (``frames="clips"``): a clips/ folder or an mp4 split by the planned frame counts."""
    motion_agreement_by_action: dict[str, float] = field(default_factory=dict)
    """Scripted action -> its motion agreement (the actions that occur)."""
    n_motion_pairs: int = 0
    """(shot, cast member) pairs counted in motion agreement."""
    n_motion_skipped: int = 0
    """Positioned cast members of mappable shots skipped: no action, or one the reader does not know."""
    n_camera_pairs: int = 0
    n_faces: int = 0
    n_short_term_pairs: int = 0
    n_long_term_pairs: int = 0
    n_palette_short_term_pairs: int = 0
    n_palette_long_term_pairs: int = 0
    n_trousers_short_term_pairs: int = 0
    n_trousers_long_term_pairs: int = 0
    notes: list[str] = field(default_factory=list)
    shots: list[ShotResult] = field(default_factory=list)

    METRICS = (
        ("scene_accuracy", "scene accuracy", "higher"),
        ("cast_accuracy", "cast accuracy (who is where)", "higher"),
        ("slot_accuracy", "slot accuracy (incl. empty)", "higher"),
        ("cast_set_accuracy", "cast-set accuracy", "higher"),
        ("clip_score", "CLIP score", "higher"),
        ("identity_short_term", "identity, short-term cosine", "higher"),
        ("identity_long_term", "identity, long-term cosine (20+ shots)", "higher"),
        ("identity_margin", "identity margin (same - different)", "higher"),
        ("identity_accuracy", "identity accuracy (nearest reference)", "higher"),
        ("toy_fid", "toy-FID", "lower"),
        ("diversity", "diversity (mean feature distance)", "higher"),
        ("copy_fraction", "copy fraction", "lower"),
        ("palette_continuity_short_term", "palette continuity, short-term (scene's next shot)", "higher"),
        ("palette_continuity_long_term", "palette continuity, long-term (20+ shots)", "higher"),
        ("trousers_continuity_short_term", "trousers continuity, short-term (next appearance)", "higher"),
        ("trousers_continuity_long_term", "trousers continuity, long-term (20+ shots)", "higher"),
        ("motion_agreement", "motion agreement (each cast member's action)", "higher"),
        ("camera_agreement", "camera agreement (pan / zoom)", "higher"),
    )
    CONTINUITY_PAIRS = (
        ("palette", "n_palette_short_term_pairs", "n_palette_long_term_pairs"),
        ("trousers", "n_trousers_short_term_pairs", "n_trousers_long_term_pairs"),
    )

    def metric_values(self) -> dict[str, float | None]:
        """The headline metrics, name -> value (None: n/a)."""
        return {name: getattr(self, name) for name, _, _ in self.METRICS}

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, value in data.items():  # JSON has no NaN
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _load_plan(script_path: Path):
    from mdream.script import load_script, plan_script

    return plan_script(load_script(script_path))


def _check_movie_dir(movie_dir: Path, plan) -> None:
    """The movie folder exists and its shots.json (when there is one) lists the script's shots."""
    if not movie_dir.exists():
        raise InputError(f"Movie folder not found: {movie_dir}", hint="Pass the folder that `mdream generate` wrote.")
    if not movie_dir.is_dir():
        raise InputError(f"{movie_dir} is not a folder.", hint="Pass the movie folder, not a file inside it.")
    shots_file = movie_dir / "shots.json"
    if shots_file.is_file():
        try:
            listed = [s["id"] for s in json.loads(shots_file.read_text())["shots"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{shots_file} is not a valid shots.json: {exc}") from exc
        planned = [s.id for s in plan.shots]
        if listed != planned:
            raise InputError(
                f"{shots_file} lists {len(listed)} shots that do not match the script's {len(planned)} shots.",
                hint="Was this movie generated from another script (or an older version of it)?",
            )


def load_keyframes(movie_dir: Path, plan) -> list[np.ndarray]:
    """MOVIE_DIR/keyframes/NNNN.png for every planned shot, in plan order (uint8 RGB arrays)."""
    _check_movie_dir(movie_dir, plan)
    keyframe_dir = movie_dir / "keyframes"
    if not keyframe_dir.is_dir():
        raise InputError(
            f"No keyframes/ folder in {movie_dir}.",
            hint="A movie folder holds keyframes/0000.png ... (one per shot, see docs/architecture.md).",
        )
    paths = [keyframe_dir / f"{shot.index:04d}.png" for shot in plan.shots]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(
            f"{len(missing)} of {len(paths)} keyframes missing in {keyframe_dir}: {shown}",
            hint="Run the keyframe and render stages for every shot first (or check the script).",
        )
    return [read_rgb(p, "keyframe") for p in paths]


def shrink(frame: np.ndarray, target: int = 64) -> np.ndarray:
    """Area-average a decoded frame [H, W, 3] by the integer factor that brings its shorter side nearest above
    ``target`` (a 256x256 viewing copy of a 64x64 movie -> 64x64; a frame no larger than twice ``target`` is kept)."""
    h, w = frame.shape[:2]
    k = max(1, min(h, w) // target)
    if k == 1:
        return frame
    h, w = h // k * k, w // k * k
    blocks = frame[:h, :w].reshape(h // k, k, w // k, k, 3).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def read_video(path: Path, target: int = 64) -> np.ndarray:
    """Every frame of a video file, each :func:`shrink`-ed: uint8 [T, h, w, 3]."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = [shrink(np.frombuffer(raw, np.uint8).reshape(height, width, 3), target) for raw in reader]
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as exc:
        raise InputError(f"{path} cannot be read as a video: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}",
                         hint="Pass an mp4 that `mdream generate` (or `mdream toy script --clips`) wrote.") from None
    if not frames:
        raise InputError(f"{path} holds no frames.", hint="Was the movie written to the end?")
    return np.stack(frames)


def _movie_file(movie_dir: Path) -> Path | None:
    """The movie mp4 that goes with a movie folder: ``movie/`` -> ``movie.mp4`` beside it (what `mdream generate`
    writes), else ``movie/movie.mp4`` (a ground-truth folder)."""
    for candidate in (movie_dir.with_suffix(".mp4"), movie_dir / "movie.mp4"):
        if candidate.is_file():
            return candidate
    return None


def load_clips(movie_dir: Path, plan, movie: Path | None = None, target: int = 64) -> tuple[list[np.ndarray], str]:
    """Every planned shot's clip, in plan order (uint8 [T, h, w, 3] each, :func:`shrink`-ed towards ``target`` px),
    and where they were read.

    Sources, first found: ``movie`` (an mp4, split into shots by the planned frame counts: round(duration * fps)
    per shot); MOVIE_DIR/clips/NNNN.mp4, one per shot (ground-truth folders); the movie mp4 beside the folder
    (``movie/`` -> ``movie.mp4``, what `mdream generate` writes) or inside it, split like ``movie``.
    """
    from mdream.stages.preview import shot_frame_counts

    _check_movie_dir(movie_dir, plan)
    if movie is None:
        clip_paths = [movie_dir / "clips" / f"{shot.index:04d}.mp4" for shot in plan.shots]
        if (movie_dir / "clips").is_dir():
            missing = [p.name for p in clip_paths if not p.is_file()]
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise InputError(f"{len(missing)} of {len(clip_paths)} clips missing in {movie_dir / 'clips'}: {shown}",
                                 hint="Write every shot's clip, or pass the whole movie with --movie PATH.")
            return [read_video(p, target) for p in clip_paths], str(movie_dir / "clips")
        movie = _movie_file(movie_dir)
        if movie is None:
            raise InputError(
                f"No clips to score for {movie_dir}: no clips/0000.mp4 ... in it and no movie mp4 beside it "
                f"({movie_dir.with_suffix('.mp4').name}) or in it (movie.mp4).",
                hint="Generate the movie with `mdream generate SCRIPT -o movie.mp4` (its folder is movie/), pass the "
                     "mp4 with --movie PATH, or score the keyframes with --frames keyframes.",
            )
    movie = Path(movie)
    if not movie.is_file():
        raise InputError(f"Movie file not found: {movie}", hint="Pass the mp4 that `mdream generate` wrote.")
    frames = read_video(movie, target)
    counts = shot_frame_counts([shot.duration for shot in plan.shots], plan.output.fps)
    if len(frames) != sum(counts):
        raise InputError(
            f"{movie} has {len(frames)} frames; the script plans {sum(counts)} ({len(counts)} shots at "
            f"{plan.output.fps} fps), so its shots cannot be told apart.",
            hint="Was it made from another script (or another fps)? Pass the movie generated from this script.",
        )
    bounds = np.cumsum([0, *counts])
    return [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], str(movie)


def sample_frames(clips: list[np.ndarray], point: str) -> list[np.ndarray]:
    """One frame of every clip: its ``first``, ``middle`` or ``last``."""
    index = {"first": lambda n: 0, "middle": lambda n: (n - 1) // 2, "last": lambda n: n - 1}[point]
    return [clip[index(len(clip))] for clip in clips]


def _reference_embeddings(embedder: FaceIdentityEmbedder, plan) -> dict[str, np.ndarray]:
    return {cid: embedder.identity(plan.face_paths(cid)) for cid in plan.characters}


def _crop(frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    from mdream.eval.toy_samples import crop_resized

    return crop_resized(frame, box, FACE_SIZE)


# ---------------------------------------------------------------------------------------------
# The toy world's view of a script
# ---------------------------------------------------------------------------------------------


class ToyView:
    """Maps a script onto the analyser's toy world; anything that does not map is n/a."""

    def __init__(self, plan, analyser):
        from mdream.toyworld import make_world

        self.world = make_world(analyser.config.world_seed)
        self.scene_class = {sid: i for i, sid in enumerate(analyser.config.scene_ids)}
        self.char_class = {cid: i for i, cid in enumerate(analyser.config.character_ids)}
        self.notes: list[str] = []
        self.characters: set[str] = set()
        for character_id, character in plan.characters.items():
            if character_id not in self.world.character_index or character_id not in self.char_class:
                self.notes.append(f"character {character_id!r} is not in toy world {self.world.seed}: n/a")
            elif not self._same_look(character.description, self.world.character(character_id).describe()):
                self.notes.append(
                    f"character {character_id!r} is described differently from toy world {self.world.seed}'s: n/a"
                )
            else:
                self.characters.add(character_id)
        self.scenes: set[str] = set()
        unknown_scenes = []
        for scene_id, scene in plan.scenes.items():
            if scene_id in self.scene_class and scene_id in self.world.scene_index and self._same_look(
                scene.description, self.world.scene(scene_id).describe()
            ):
                self.scenes.add(scene_id)
            else:
                unknown_scenes.append(scene_id)
        if unknown_scenes:
            self.notes.append(
                f"scenes not in toy world {self.world.seed} (unknown id or other description; n/a): "
                + ", ".join(unknown_scenes)
            )

    @staticmethod
    def _same_look(script_text: str, world_text: str) -> bool:
        # The toy script writer uses the world's own description; ignore case and spacing.
        norm = lambda s: " ".join(s.lower().split())  # noqa: E731
        return norm(world_text) in norm(script_text)

    def maps(self, shot) -> bool:
        """Whether the analyser can judge this shot: its scene and all its cast are in the world."""
        return shot.scene_id in self.scenes and all(m.id in self.characters for m in shot.cast)

    def shot_spec(self, shot):
        """The toy ShotSpec of a planned shot (mappable, positioned cast members only)."""
        from mdream.toyworld.episode import CastMember, ShotSpec
        from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS

        cast, taken = [], set()
        for member in shot.cast:
            # One figure per position in the toy world: a second one at the same place is left out.
            if member.id in self.characters and member.position is not None and member.position not in taken:
                taken.add(member.position)
                action = member.action if member.action in ACTIONS else ACTIONS[0]
                expression = member.expression if member.expression in EXPRESSIONS else EXPRESSIONS[0]
                cast.append(CastMember(member.id, member.position, action, expression))
        cast.sort(key=lambda m: POSITIONS.index(m.position))
        camera = shot.camera if shot.camera in CAMERAS else CAMERAS[0]
        # Where faces are drawn does not depend on the scene: an unknown scene still has a layout.
        scene_id = shot.scene_id if shot.scene_id in self.scenes else self.world.scenes[0].id
        return ShotSpec(scene_id, tuple(cast), camera)

    def face_boxes(self, shot, height: int, width: int) -> list[tuple[str, tuple[float, float, float, float]]]:
        """Where the toy world draws the faces of this shot's cast, in frame pixel coordinates."""
        from mdream.eval.toy_samples import square_box
        from mdream.toyworld import face_boxes

        spec = self.shot_spec(shot)
        size = width if height == width and width in TOY_FRAME_SIZES else 128
        sx, sy = width / size, height / size
        boxes = []
        for character_id, box in face_boxes(spec, size, self.world):
            x0, y0, x1, y1 = square_box(box, size, size)
            boxes.append((character_id, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
        return boxes

    def expected_chars(self, shot) -> np.ndarray | None:
        """[3] character class per position (-1 empty), or None if a cast member has no position."""
        chars = np.full(3, -1, np.int64)
        for member in shot.cast:
            if member.position is None:
                return None
            chars[POSITIONS.index(member.position)] = self.char_class[member.id]
        return chars


def _position_boxes(shot, height: int, width: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Real backend without a face detector: a square in the upper part of the character's third."""
    boxes = []
    side = min(width / 3, height / 2)
    for member in shot.cast:
        if member.position is None:
            continue
        cx = (POSITIONS.index(member.position) + 0.5) * width / 3
        boxes.append((member.id, (cx - side / 2, height * 0.08, cx + side / 2, height * 0.08 + side)))
    return boxes


# ---------------------------------------------------------------------------------------------
# Real backend: CLIP
# ---------------------------------------------------------------------------------------------


class ClipScorer:
    """A transformers CLIPModel with its tokenizer and image processor (hub id or local folder)."""

    def __init__(self, source: str | Path):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(str(source)).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(source))
            self.image_processor = AutoImageProcessor.from_pretrained(str(source))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"Could not load the CLIP model {source!s}: {exc}",
                hint="Pass a folder with a saved CLIPModel + tokenizer + image processor, or a hub id you can reach.",
            ) from exc
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._torch = torch

    @staticmethod
    def _pooled(output):
        return output if hasattr(output, "shape") else output.pooler_output

    def image_embeddings(self, frames: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for start in range(0, len(frames), batch_size):
                images = [Image.fromarray(f) for f in frames[start : start + batch_size]]
                inputs = self.image_processor(images=images, return_tensors="pt")
                out.append(self._pooled(self.model.get_image_features(pixel_values=inputs["pixel_values"])))
        return self._torch.cat(out).float().numpy()

    def text_embeddings(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(
                    texts[start : start + batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                out.append(self._pooled(self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))))
        return self._torch.cat(out).float().numpy()


# ---------------------------------------------------------------------------------------------
# evaluate_movie
# ---------------------------------------------------------------------------------------------


def _faces_of_movie(frames, plan, embedder, boxes_of) -> tuple[list[metrics.FaceObservation], dict[int, int]]:
    crops, owners = [], []
    for shot, frame in zip(plan.shots, frames, strict=True):
        h, w = frame.shape[:2]
        for character_id, box in boxes_of(shot, h, w):
            crops.append(_crop(frame, box))
            owners.append((shot.index, character_id))
    if not crops:
        return [], {}
    embeddings = embedder.embed(np.stack(crops))
    per_shot: dict[int, int] = {}
    faces = []
    for (index, character_id), emb in zip(owners, embeddings, strict=True):
        faces.append(metrics.FaceObservation(index, character_id, emb))
        per_shot[index] = per_shot.get(index, 0) + 1
    return faces, per_shot


def evaluate_movie(
    movie_dir: str | Path,
    script_path: str | Path,
    backend: str = "toy",
    clip_model: str | Path | None = None,
    face_model: str | Path | None = None,
    analyser_dir: str | Path | None = None,
    seed: int = 0,
    frames: str = "keyframes",
    movie: str | Path | None = None,
    motion_reader_dir: str | Path | None = None,
) -> EvalReport:
    """Score a movie against the script: MOVIE_DIR/keyframes/NNNN.png (plan order), or with ``frames="clips"`` every
    shot's clip (:func:`load_clips`; ``movie``: the mp4 to read instead of the one found beside MOVIE_DIR).

    ``face_model`` defaults to the shipped toy embedder on the toy backend; ``analyser_dir`` and
    ``motion_reader_dir`` to the shipped frame analyser and motion reader. ``seed`` seeds the ground-truth renders of
    the toy-FID reference set.
    """
    if backend not in BACKENDS:
        raise InputError(f"Unknown evaluation backend {backend!r}.", hint=f"Use one of: {', '.join(BACKENDS)}.")
    if frames not in FRAME_SOURCES:
        raise InputError(f"Unknown frame source {frames!r}.", hint=f"--frames takes one of: {', '.join(FRAME_SOURCES)}.")
    if movie is not None and frames != "clips":
        raise InputError("--movie names the mp4 whose clips are scored: it goes with --frames clips.",
                         hint="Add --frames clips, or leave out --movie to score the keyframes.")
    movie_dir, script_path = Path(movie_dir), Path(script_path)
    if backend == "real" and clip_model is None and face_model is None:
        raise InputError(
            "The real backend needs a CLIP model and/or a face-recognition model.",
            hint="Pass --clip-model (hub id or folder) and/or --face-model (an insightface recognition .onnx).",
        )
    plan = _load_plan(script_path)
    clips, source = None, None
    if frames == "clips":
        # the toy evaluator reads 64 px (the frame analyser's size); CLIP and face crops want more
        target = 64 if backend == "toy" else 256
        clips, source = load_clips(movie_dir, plan, Path(movie) if movie is not None else None, target)
        frame_sets = [sample_frames(clips, point) for point in SAMPLE_POINTS]
    else:
        frame_sets = [load_keyframes(movie_dir, plan)]

    if face_model is None and backend == "toy":
        face_model = TOY_FACE_MODEL
    embedder = FaceIdentityEmbedder(face_model) if face_model is not None else None
    analyser = view = scorer = None
    if backend == "toy":
        from mdream.eval.frame_analyser import FrameAnalyser

        analyser = FrameAnalyser.from_pretrained(analyser_dir or TOY_ANALYSER)
        view = ToyView(plan, analyser)
    elif clip_model is not None:
        scorer = ClipScorer(clip_model)

    reports = [_score_frames(movie_dir, script_path, plan, frame_set, backend, embedder, analyser, view, scorer, seed)
               for frame_set in frame_sets]
    report = reports[0] if len(reports) == 1 else _merge_reports(reports, base=SAMPLE_POINTS.index("middle"))
    report.frames = frames
    if clips is not None:
        report.clips_source = source
        report.notes.insert(0, f"frame metrics: the mean over the {', '.join(SAMPLE_POINTS)} frame of every shot's "
                               "clip (pair counts summed; per-shot readings from the middle frame)")
        kind = _movie_kind(Path(source))
        if kind == "animatic":
            report.notes.append(f"{source} is the animatic (held keyframes, no video model): the floor of motion")
        if view is not None:
            from mdream.eval.motion_reader import MotionReader

            reader = MotionReader.from_pretrained(motion_reader_dir or TOY_MOTION_READER)
            _score_motion(report, plan, clips, reader, view)
        else:
            report.notes.append("real backend: motion and camera agreement are n/a (the motion reader reads the toy "
                                "world)")
    return report


def _movie_kind(source: Path) -> str | None:
    """``animatic`` or ``video`` as the run report beside a generated movie says (None: no report)."""
    report = source.with_suffix(".report.json")
    if source.suffix != ".mp4" or not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("movie_kind")
    except (ValueError, AttributeError):
        return None


def _score_frames(movie_dir: Path, script_path: Path, plan, frames: list[np.ndarray], backend: str, embedder,
                  analyser, view: ToyView | None, scorer: ClipScorer | None, seed: int) -> EvalReport:
    """The frame metrics of one frame per shot (plan order)."""
    report = EvalReport(backend=backend, movie_dir=str(movie_dir), script=str(script_path), n_shots=len(plan.shots))
    results = [
        ShotResult(
            shot.index, shot.id, shot.scene_id,
            cast={p: next((m.id for m in shot.cast if m.position == p), None) for p in POSITIONS},
        )
        for shot in plan.shots
    ]
    report.shots = results
    report.copy_fraction = metrics.copy_fraction(frames)

    if backend == "toy":
        report.notes.extend(view.notes)
        _score_toy(report, plan, frames, analyser, view, seed)
        boxes_of = view.face_boxes
    else:
        if scorer is not None:
            _score_clip(report, plan, frames, scorer)
        else:
            report.notes.append("no --clip-model: CLIP score and diversity are n/a")
        report.notes.append("real backend: faces cut from the script's position thirds (no face detector)")
        boxes_of = _position_boxes
        report.continuity_unavailable = "the real backend has no frame analyser to read the toy world's hidden state"

    if embedder is None:
        report.notes.append("no --face-model: identity metrics are n/a")
        return report
    faces, per_shot = _faces_of_movie(frames, plan, embedder, boxes_of)
    for result in results:
        result.faces = per_shot.get(result.index, 0)
    report.n_faces = len(faces)
    consistency = metrics.identity_consistency(faces)
    report.identity_short_term = consistency["short_term"]
    report.identity_long_term = consistency["long_term"]
    report.identity_margin = consistency["margin"]
    report.n_short_term_pairs = int(consistency["short_term_pairs"])
    report.n_long_term_pairs = int(consistency["long_term_pairs"])
    report.identity_accuracy = metrics.identity_accuracy(faces, _reference_embeddings(embedder, plan))
    return report


_SUMMED = ("n_faces", "n_short_term_pairs", "n_long_term_pairs", "n_palette_short_term_pairs",
           "n_palette_long_term_pairs", "n_trousers_short_term_pairs", "n_trousers_long_term_pairs")


def _merge_reports(reports: list[EvalReport], base: int) -> EvalReport:
    """One report of several frame samples of the same shots: each metric the mean of its measured values (n/a
    where none is), pair counts summed, the per-shot readings of ``reports[base]``, every note once."""
    import dataclasses

    merged = dataclasses.replace(reports[base])
    for name, _, _ in EvalReport.METRICS:
        values = [getattr(r, name) for r in reports if getattr(r, name) is not None]
        setattr(merged, name, float(np.mean(values)) if values else None)
    for name in _SUMMED:
        setattr(merged, name, sum(getattr(r, name) for r in reports))
    merged.notes = list(dict.fromkeys(note for r in reports for note in r.notes))
    return merged


def _score_motion(report: EvalReport, plan, clips: list[np.ndarray], reader, view: ToyView) -> None:
    """Motion and camera agreement: the reader's reading of every mappable shot's clip against the script."""
    readings = reader.read(clips)
    actions, cameras = reader.config.actions, reader.config.cameras
    motion, camera = [], []
    for shot, result in zip(plan.shots, report.shots, strict=True):
        read = readings["actions"][shot.index]
        result.predicted_actions = {p: (actions[a] if a >= 0 else None) for p, a in zip(POSITIONS, read, strict=True)}
        result.predicted_camera = cameras[readings["camera"][shot.index]]
        if not view.maps(shot):
            continue
        camera.append(metrics.MotionReading(shot.index, shot.camera or "", result.predicted_camera))
        given = [m.position for m in shot.cast if m.position is not None]
        for member in shot.cast:
            if member.position is None or given.count(member.position) > 1:
                continue  # no place to read it at, or two figures scripted at one place
            expected = (member.action or "").strip().lower()
            motion.append(metrics.MotionReading(shot.index, expected, result.predicted_actions[member.position]))
    agreement = metrics.motion_agreement(motion, actions)
    report.motion_agreement = agreement["agreement"]
    report.n_motion_pairs = int(agreement["pairs"])
    report.n_motion_skipped = int(agreement["skipped"])
    report.motion_agreement_by_action = dict(agreement["by_expected"])
    camera_agreement = metrics.motion_agreement(camera, [c for c in cameras if c != "still"])
    report.camera_agreement = camera_agreement["agreement"]
    report.n_camera_pairs = int(camera_agreement["pairs"])
    if not agreement["pairs"]:
        report.notes.append("motion agreement: no cast member of a toy-world shot has an action the motion reader "
                            f"knows ({', '.join(actions)}): n/a")


def _score_toy(report: EvalReport, plan, frames, analyser, view: ToyView, seed: int) -> None:
    from mdream.toyworld import render_keyframe

    predictions = analyser.analyse(np.stack([_to_analyser_size(f) for f in frames]))
    scene_ids = analyser.config.scene_ids
    char_ids = analyser.config.character_ids
    scene_hits, cast_hits, slot_hits, set_hits = [], [], [], []
    for shot, result in zip(plan.shots, report.shots, strict=True):
        pred_chars = predictions["chars"][shot.index]
        result.predicted_cast = {p: (char_ids[c] if c >= 0 else None) for p, c in zip(POSITIONS, pred_chars, strict=True)}
        if shot.scene_id in view.scenes:
            result.predicted_scene = scene_ids[predictions["scene"][shot.index]]
            scene_hits.append(result.predicted_scene == shot.scene_id)
        if not view.maps(shot):
            continue
        predicted_set = {char_ids[c] for c in pred_chars if c >= 0}
        set_hits.append(predicted_set == set(shot.cast_ids))
        expected = view.expected_chars(shot)
        if expected is None:
            continue
        slot_hits.extend((expected == pred_chars).tolist())
        cast_hits.extend((expected[expected >= 0] == pred_chars[expected >= 0]).tolist())
    report.scene_accuracy = float(np.mean(scene_hits)) if scene_hits else None
    report.cast_accuracy = float(np.mean(cast_hits)) if cast_hits else None
    report.slot_accuracy = float(np.mean(slot_hits)) if slot_hits else None
    report.cast_set_accuracy = float(np.mean(set_hits)) if set_hits else None
    report.diversity = metrics.mean_pairwise_distance(predictions["features"])
    _score_continuity(report, plan, predictions, analyser, view)

    # toy-FID: the movie's keyframes vs fresh ground-truth renders of the same (mappable) shots.
    mappable = [shot for shot in plan.shots if view.maps(shot)]
    if len(mappable) < 2:
        report.notes.append("toy-FID needs at least two shots inside the toy world: n/a")
        return
    # The script leaves the hidden state open and the movie fills it in: each reference is its shot rendered with the
    # palette and trousers the analyser reads in the movie's frame, so toy-FID scores how the frames look, not which
    # (equally right) variants the movie chose; continuity is scored apart.
    references = []
    for shot in mappable:
        h, w = frames[shot.index].shape[:2]
        size = w if h == w and w in TOY_FRAME_SIZES else 64
        rng = np.random.default_rng([seed, 0xF1D, shot.index])
        references.append(_to_analyser_size(render_keyframe(view.world, _as_read(view.shot_spec(shot), predictions,
                                                                                 shot.index), size, rng)))
    reference_features = analyser.analyse(np.stack(references))["features"]
    movie_features = predictions["features"][[shot.index for shot in mappable]]
    report.toy_fid = metrics.frechet_distance(movie_features, reference_features)


def _as_read(spec, predictions: dict[str, np.ndarray], index: int):
    """The toy ShotSpec with the hidden palette and trousers the analyser read in frame ``index`` (unchanged when the
    analyser does not read them)."""
    import dataclasses

    if "palette" not in predictions:
        return spec
    trousers = predictions["trousers"][index]  # [3] per position
    cast = tuple(dataclasses.replace(m, trousers=int(trousers[POSITIONS.index(m.position)])) for m in spec.cast)
    return dataclasses.replace(spec, cast=cast, palette=int(predictions["palette"][index]))


def _trouser_positions(shot, predicted_cast: dict[str, str | None], view: ToyView) -> dict[str, str]:
    """Character id -> where its trousers are read in this shot (toy-world characters only).

    The script's position when it gives one; without it, the one place where the analyser sees that
    character (skipped when it sees it nowhere or in several places, or the place is the script's for
    someone else). A position the script gives to two characters is skipped.
    """
    given = [m.position for m in shot.cast if m.position is not None]
    taken = set(given)
    shared = {p for p in taken if given.count(p) > 1}
    out: dict[str, str] = {}
    for member in shot.cast:
        if member.id not in view.characters:
            continue
        if member.position is not None:
            if member.position not in shared:
                out[member.id] = member.position
            continue
        seen = [p for p, c in predicted_cast.items() if c == member.id and p not in taken]
        if len(seen) == 1:
            out[member.id] = seen[0]
    return out


def _score_continuity(report: EvalReport, plan, predictions: dict[str, np.ndarray], analyser, view: ToyView) -> None:
    """Agreement of the hidden variants the analyser reads across the shots of a scene / of a character."""
    if not analyser.reads_hidden_state:
        report.continuity_unavailable = (
            "the frame analyser has no hidden-state heads (palette, trousers); "
            "use one trained by `mdream train analyser` on the toy world with hidden state"
        )
        return
    palettes, trousers = [], []
    for shot, result in zip(plan.shots, report.shots, strict=True):
        if shot.scene_id in view.scenes:
            result.predicted_palette = int(predictions["palette"][shot.index])
            palettes.append(metrics.VariantReading(shot.index, shot.scene_id, result.predicted_palette))
        if shot.camera == "close-up":  # close-ups frame the faces: no legs, no trousers
            continue
        for character_id, position in _trouser_positions(shot, result.predicted_cast, view).items():
            value = int(predictions["trousers"][shot.index, POSITIONS.index(position)])
            result.predicted_trousers[character_id] = value
            trousers.append(metrics.VariantReading(shot.index, character_id, value))
    for name, readings in (("palette", palettes), ("trousers", trousers)):
        agreement = metrics.variant_agreement(readings)
        setattr(report, f"{name}_continuity_short_term", agreement["short_term"])
        setattr(report, f"{name}_continuity_long_term", agreement["long_term"])
        setattr(report, f"n_{name}_short_term_pairs", int(agreement["short_term_pairs"]))
        setattr(report, f"n_{name}_long_term_pairs", int(agreement["long_term_pairs"]))


def _to_analyser_size(frame: np.ndarray) -> np.ndarray:
    from mdream.eval.frame_analyser import ANALYSER_SIZE

    if frame.shape[:2] == (ANALYSER_SIZE, ANALYSER_SIZE):
        return frame
    return np.asarray(Image.fromarray(frame).resize((ANALYSER_SIZE, ANALYSER_SIZE), Image.BILINEAR))


def _score_clip(report: EvalReport, plan, frames, scorer: ClipScorer) -> None:
    image_emb = scorer.image_embeddings(frames)
    text_emb = scorer.text_embeddings([shot.descriptor for shot in plan.shots])
    scores = metrics.clip_score(image_emb, text_emb)
    for result, score in zip(report.shots, scores, strict=True):
        result.clip_score = float(score)
    report.clip_score = float(scores.mean()) if len(scores) else None
    normalised = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True).clip(1e-12)
    report.diversity = metrics.mean_pairwise_distance(normalised)
