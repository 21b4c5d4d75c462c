"""The shipped toy weights still fit the code: every model in ``mdream/assets`` is built from its config (and,
where a packaged recipe made it, from that recipe through the trainer's own builder) and its weights are loaded
strictly: a missing or unexpected key or a shape mismatch fails. Only loading, no inference.

Also a guard on the package's size (README, "Package size").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ASSETS = Path(__file__).resolve().parent.parent / "mdream" / "assets"
MODELS = ASSETS / "models"
EVAL = ASSETS / "eval"

#: The most mdream/assets may hold (bytes): 23.2 MB with every weight in float16, the toy video model's 4.2 MB
#: (its UNet, the toy CLIP vision tower it embeds the anchor with, its action encoder) included, with room for a
#: video model up to about 10 MB.
ASSETS_LIMIT = 30_000_000
VIDEO = MODELS / "toy-video"
VIDEO_WEIGHTS = ("models/toy-video/unet/diffusion_pytorch_model.safetensors",
                 "models/toy-video/image_encoder/model.safetensors",
                 "models/toy-video/action_encoder/diffusion_pytorch_model.safetensors")


def load_strict(model: torch.nn.Module, path: Path, tied: tuple[str, ...] = ()) -> None:
    """Load ``path`` into ``model``; every key must match in name and shape (``tied``: keys a model ties to others,
    which its files leave out)."""
    state = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - set(tied))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    assert not (missing or unexpected or wrong), (
        f"{path.relative_to(ASSETS)} no longer fits the code: missing {missing[:5]}, unexpected {unexpected[:5]}, "
        f"other shapes {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}")
    model.load_state_dict(state, strict=not tied)


def recipe(config_cls: type, name: str, trainer: str):
    from mdream.training.config import load_recipe, with_values

    return with_values(config_cls(), load_recipe(config_cls, name, trainer)[1])


def test_toy_clip_fits_its_config_and_its_recipe():
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from mdream.models.toy_clip import build_toy_clip
    from mdream.training.clip import ClipTrainingConfig

    folder = MODELS / "toy-clip"
    load_strict(CLIPModel(CLIPConfig.from_pretrained(folder)), folder / "model.safetensors")
    config = recipe(ClipTrainingConfig, "clip-toy", "clip")
    model = build_toy_clip(AutoTokenizer.from_pretrained(folder), image_size=config.image_size,
                           patch_size=config.patch_size, hidden_size=config.hidden_size, num_layers=config.num_layers,
                           num_heads=config.num_heads, projection_dim=config.projection_dim)
    load_strict(model, folder / "model.safetensors")


def test_toy_tokenizer_fits_its_configs_and_its_recipe():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPConfig

    from mdream.models.compressor import TokenCompressor
    from mdream.models.decoder import ContextProjector
    from mdream.training.tokenizer import TokenizerTrainingConfig, build_toy_decoder

    folder = MODELS / "toy-tokenizer"
    encoder_cfg = json.loads((folder / "encoder" / "keyframe_encoder.json").read_text())
    clip = CLIPConfig.from_pretrained((folder / "encoder" / encoder_cfg["vision_model"]).resolve())
    compressor = TokenCompressor.from_config(TokenCompressor.load_config(folder / "encoder" / "compressor"))
    assert compressor.config.vision_dim == clip.vision_config.hidden_size
    load_strict(compressor, folder / "encoder" / "compressor" / "diffusion_pytorch_model.safetensors")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "decoder" / "unet"))
    load_strict(unet, folder / "decoder" / "unet" / "diffusion_pytorch_model.safetensors")
    context = ContextProjector.from_config(ContextProjector.load_config(folder / "decoder" / "context"))
    load_strict(context, folder / "decoder" / "context" / "diffusion_pytorch_model.safetensors")
    assert context.config.text_dim == clip.projection_dim

    # the recipe through the trainer's builder makes the same decoder, and the same compressor
    config = recipe(TokenizerTrainingConfig, "tokenizer-toy-cpu", "tokenizer")
    decoder = build_toy_decoder(config, clip.projection_dim)
    load_strict(decoder.unet, folder / "decoder" / "unet" / "diffusion_pytorch_model.safetensors")
    load_strict(decoder.context, folder / "decoder" / "context" / "diffusion_pytorch_model.safetensors")
    fresh = TokenCompressor(vision_dim=clip.vision_config.hidden_size, num_tokens=config.num_tokens,
                            token_dim=config.token_dim, width=config.compressor_width,
                            num_layers=config.compressor_layers)
    load_strict(fresh, folder / "encoder" / "compressor" / "diffusion_pytorch_model.safetensors")


def test_toy_ar_fits_its_config_and_its_recipe():
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mdream.models.keyframe_ar import KeyframeAR, KeyframeARConfig
    from mdream.training.ar import ARTrainingConfig

    folder = MODELS / "toy-ar"
    cfg = json.loads((folder / "keyframe_ar.json").read_text())
    backbone_cfg = AutoConfig.from_pretrained(folder / cfg["backbone"])
    backbone = AutoModelForCausalLM.from_config(backbone_cfg)
    tied = ("lm_head.weight",) if getattr(backbone_cfg, "tie_word_embeddings", False) else ()
    load_strict(backbone, folder / cfg["backbone"] / "model.safetensors", tied=tied)
    model = KeyframeAR(backbone, AutoTokenizer.from_pretrained(folder / cfg.get("tokenizer", "tokenizer")),
                       KeyframeARConfig.from_dict(cfg))
    own = torch.nn.ModuleDict({"projectors": model.projectors, "head": model.head})
    load_strict(own, folder / "keyframe_ar.safetensors")

    config = recipe(ARTrainingConfig, "ar-toy-cpu", "ar")
    assert (backbone_cfg.hidden_size, backbone_cfg.num_hidden_layers, backbone_cfg.num_attention_heads) == (
        config.hidden_size, config.num_layers, config.num_heads)
    assert cfg["head"] == config.head
    assert config.head_config().items() <= cfg["head_config"].items()  # the recipe's; the rest are the head's defaults


def test_frame_analyser_fits_its_config():
    from mdream.eval.frame_analyser import FrameAnalyser, FrameAnalyserConfig

    folder = EVAL / "frame_analyser"
    config = FrameAnalyserConfig.from_dict(json.loads((folder / "config.json").read_text()))
    load_strict(FrameAnalyser(config), folder / "model.safetensors")


def test_motion_reader_fits_its_config():
    from mdream.eval.motion_reader import MotionReader, MotionReaderConfig

    folder = EVAL / "motion_reader"
    config = MotionReaderConfig.from_dict(json.loads((folder / "config.json").read_text()))
    load_strict(MotionReader(config), folder / "model.safetensors")


def test_face_embedder_onnx_fits_its_config():
    import onnx
    from onnx import numpy_helper

    from mdream.eval.face_embedder import FaceEmbedderConfig, FaceEmbedderNet

    saved = json.loads((EVAL / "toy_face_recognition.json").read_text())
    fields = FaceEmbedderConfig.__dataclass_fields__
    config = FaceEmbedderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    net = FaceEmbedderNet(config)
    graph = onnx.load(str(EVAL / "toy_face_recognition.onnx")).graph
    # the exporter folds batch norms into the convolutions: compare the convolution and linear weights' shapes
    in_onnx = sorted(tuple(numpy_helper.to_array(t).shape) for t in graph.initializer if len(t.dims) >= 2)
    in_code = sorted(tuple(v.shape) for k, v in net.state_dict().items() if v.dim() >= 2)
    assert in_onnx == in_code
    output = graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 112, 112]
    assert output[-1].dim_value in (0, config.embedding_dim)


def test_the_toy_bundle_ships_a_video_model():
    """The toy bundle names ``video: ../../models/toy-video``, and the package holds it."""
    from mdream.models.bundle import ModelBundle

    video = ModelBundle.find("toy").components["video"]
    assert video.present and (VIDEO / "video.json").is_file()


def test_toy_video_fits_its_configs_and_its_recipe():
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mdream.models.video import ActionEncoder, VideoModelConfig
    from mdream.training.video import TOY_CLIP, VideoTrainingConfig, new_video_model

    if not (VIDEO / "video.json").is_file():
        pytest.skip("no toy video model ships (test_the_toy_bundle_ships_a_video_model says so)")
    unet = UNetSpatioTemporalConditionModel.from_config(UNetSpatioTemporalConditionModel.load_config(VIDEO / "unet"))
    load_strict(unet, VIDEO / "unet" / "diffusion_pytorch_model.safetensors")
    tower = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(VIDEO / "image_encoder"))
    load_strict(tower, VIDEO / "image_encoder" / "model.safetensors")
    actions = ActionEncoder.from_config(ActionEncoder.load_config(VIDEO / "action_encoder"))
    load_strict(actions, VIDEO / "action_encoder" / "diffusion_pytorch_model.safetensors")
    config = VideoModelConfig.from_dict(json.loads((VIDEO / "video.json").read_text()))
    assert actions.config.action_dim == config.action_dim
    assert unet.config.cross_attention_dim == tower.config.projection_dim == actions.config.cross_attention_dim

    # the anchor's image encoder is the shipped toy CLIP's vision tower (same architecture)
    clip = CLIPConfig.from_pretrained(TOY_CLIP).vision_config
    assert (clip.hidden_size, clip.num_hidden_layers, clip.image_size, clip.patch_size) == (
        tower.config.hidden_size, tower.config.num_hidden_layers, tower.config.image_size, tower.config.patch_size)

    # the recipe through the trainer's builder makes the same model
    recipe_config = recipe(VideoTrainingConfig, "video-toy-action-map", "video")
    fresh = new_video_model(recipe_config)
    load_strict(fresh.unet, VIDEO / "unet" / "diffusion_pytorch_model.safetensors")
    load_strict(fresh.action_encoder, VIDEO / "action_encoder" / "diffusion_pytorch_model.safetensors")
    built = fresh.config
    assert (config.patch_size, config.width, config.height, config.num_frames, config.fps) == (
        built.patch_size, built.width, built.height, built.num_frames, built.fps)
    assert (config.residual, config.sigma_data, config.prediction) == (built.residual, built.sigma_data, built.prediction)
    assert (config.anchor_tokens, config.colour_coherence) == (built.anchor_tokens, built.colour_coherence)
    assert config.action_map == built.action_map
    # sampled and trained as the recipe says: its Euler steps per clip, its noise levels
    assert config.num_inference_steps == recipe_config.sample_steps
    trained = json.loads((VIDEO / "train_config.json").read_text())
    assert (trained["p_mean"], trained["p_std"]) == (recipe_config.p_mean, recipe_config.p_std)


def test_every_shipped_weights_file_is_checked():
    """A new weights file under mdream/assets needs a test above."""
    checked = {"models/toy-clip/model.safetensors", "models/toy-ar/backbone/model.safetensors",
               "models/toy-ar/keyframe_ar.safetensors",
               "models/toy-tokenizer/encoder/compressor/diffusion_pytorch_model.safetensors",
               "models/toy-tokenizer/decoder/unet/diffusion_pytorch_model.safetensors",
               "models/toy-tokenizer/decoder/context/diffusion_pytorch_model.safetensors",
               "eval/frame_analyser/model.safetensors", "eval/motion_reader/model.safetensors",
               "eval/toy_face_recognition.onnx", *VIDEO_WEIGHTS}
    shipped = {str(p.relative_to(ASSETS)) for p in ASSETS.rglob("*") if p.suffix in (".safetensors", ".onnx", ".bin")}
    unchecked = sorted(shipped - checked)
    assert not unchecked, f"shipped weights no test loads: {unchecked}"


def test_shipped_weights_are_float16_as_the_toy_bundle_writes_them():
    """`make toy-bundle` stores every float weight as float16; the shipped files must be what it writes."""
    from safetensors import safe_open

    files = sorted(ASSETS.rglob("*.safetensors"))
    assert len(files) >= 10
    wide = []
    for path in files:
        with safe_open(str(path), "pt") as handle:
            wide += [f"{path.relative_to(ASSETS)}:{k}" for k in handle.keys()
                     if handle.get_slice(k).get_dtype() in ("F32", "F64", "BF16")]
    assert not wide, f"float weights not stored as float16: {wide[:5]}"


def test_package_assets_stay_small():
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size <= ASSETS_LIMIT, (
        f"mdream/assets holds {size / 1e6:.1f} MB, over the {ASSETS_LIMIT / 1e6:.0f} MB the package allows: store the "
        "weights in float16 (`mdream train export --fp16`) or keep large models out of the package.")
