"""The full-size path with tiny random CLIP-shaped and SDXL-shaped backbones.

Every model is built from a config (as diffusers' own tests do), saved to a temp folder and loaded
back through the same ``from_pretrained`` code that loads real ViT-L/14, LongCLIP and SDXL folders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from mdream.errors import InputError
from mdream.models.compressor import TokenCompressor
from mdream.models.decoder import ContextProjector, KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder
from mdream.models.toy_clip import build_toy_clip, build_word_tokenizer, save_clip_folder

TEXTS = ["Wide shot. Mira walks along the pier at dusk.", "Close-up. Bob waves, happy, in the kitchen."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullsize")
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(TEXTS, max_length=32)
    # CLIP-shaped: a CLIPModel folder (both towers), image size 30 so encode must resize.
    clip = build_toy_clip(tokenizer, image_size=30, patch_size=6, hidden_size=32, num_layers=2, num_heads=2, projection_dim=24)
    save_clip_folder(clip, tokenizer, root / "clip")
    # LongCLIP-style text-only folder: CLIPTextModel without projection, 248 positions.
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=248, eos_token_id=3, pad_token_id=0, bos_token_id=2)
    CLIPTextModel(text_cfg).save_pretrained(root / "longclip")
    tokenizer.save_pretrained(root / "longclip")
    # A vision tower saved on its own (as a ViT-H/14 CLIPVisionModel folder would be).
    vision_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    CLIPVisionModel(vision_cfg).save_pretrained(root / "vision")
    return root


def sdxl_decoder(token_dim: int = 16, num_tokens: int = 2, text_dim: int = 24,
                 character_text_dim: int | None = None) -> KeyframeDecoder:
    """The dummy SDXL pipeline's UNet/VAE configs from diffusers' tests, shrunk further."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=32, norm_num_groups=16,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pooled = KeyframeDecoder.pooled_dim_for(unet)
    context = ContextProjector(num_tokens=num_tokens, token_dim=token_dim, face_dim=512, max_faces=3,
                               text_dim=text_dim, cross_attention_dim=64, pooled_dim=pooled,
                               character_text_dim=character_text_dim)
    return KeyframeDecoder(unet, context, KeyframeDecoder.make_scheduler("euler", scheduler.config), vae, "euler")


def conditions(batch: int = 2, seed: int = 1, token_dim: int = 16, text_dim: int = 24):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 2, token_dim, generator=g)
    faces = torch.nn.functional.normalize(torch.randn(batch, 2, 512, generator=g), dim=-1)
    mask = torch.tensor([[True, True], [True, False]])[:batch]
    text = torch.nn.functional.normalize(torch.randn(batch, text_dim, generator=g), dim=-1)
    return tokens, faces, mask, text


@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "decoder"
    decoder = sdxl_decoder()
    decoder.save_pretrained(folder)
    return folder, decoder


def test_keyframe_encoder_round_trip_and_input_forms(folders, tmp_path):
    torch.manual_seed(0)
    encoder = KeyframeEncoder.from_vision_model(str(folders / "clip"), num_tokens=2, token_dim=16, width=32, num_heads=2)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)  # non-square, not CLIP's size
    tokens = encoder.encode(frames)
    assert tokens.shape == (3, 2, 16) and tokens.dtype == torch.float32
    # the same frames as float [-1, 1] channels-first give the same tokens
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(encoder.encode(as_float), tokens)
    # different frames -> different tokens (the encoder reads its input)
    assert not torch.allclose(encoder.encode(frames[::-1].copy()), tokens)
    # saved with a reference to the CLIP folder, and with its own copy of the vision tower
    encoder.save_pretrained(tmp_path / "by_ref")
    copy = KeyframeEncoder(encoder.vision_model, encoder.compressor, encoder.preprocessor)
    copy.save_pretrained(tmp_path / "with_copy")
    assert (tmp_path / "with_copy" / "vision" / "config.json").is_file()
    for folder in ("by_ref", "with_copy"):
        torch.testing.assert_close(KeyframeEncoder.from_pretrained(tmp_path / folder).encode(frames), tokens)


def test_vision_features_run_where_the_vision_tower_is(folders):
    """Training moves the frozen vision tower to the GPU before accelerate moves the compressor; the CLIP
    features must follow the tower, not the compressor (this failed on an H200: cuda and cpu tensors mixed).
    Here the compressor sits on the meta device, which any computation on it would trip over."""
    encoder = KeyframeEncoder.from_vision_model(str(folders / "clip"), num_tokens=2, token_dim=16, width=32, num_heads=2)
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    expected, _ = encoder.vision_features(frames)
    encoder.compressor.to("meta")
    patches, pooled = encoder.vision_features(frames)
    assert patches.device.type == "cpu" and pooled.device.type == "cpu"
    torch.testing.assert_close(patches, expected)


def test_keyframe_encoder_uses_separate_vision_folder_and_feature_layer(folders):
    encoder = KeyframeEncoder.from_vision_model(str(folders / "vision"), vision_feature_layer=-2, num_tokens=4, token_dim=8)
    patches, pooled = encoder.vision_features(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert patches.shape == (2, 1 + (32 // 8) ** 2, 32) and pooled.shape == (2, 32)
    assert encoder.encode(np.zeros((2, 32, 32, 3), dtype=np.uint8)).shape == (2, 4, 8)


def test_compressor_width_must_match_vision(folders):
    vision = CLIPVisionModel.from_pretrained(folders / "vision")
    with pytest.raises(InputError, match="patch tokens"):
        KeyframeEncoder(vision, TokenCompressor(vision_dim=99), None)


@pytest.mark.parametrize("kind", ["clip", "longclip", "redirect"])
def test_text_encoder_loads_every_clip_folder_shape(folders, tmp_path, kind):
    if kind == "redirect":
        (tmp_path / "text_encoder.json").write_text(json.dumps({"model": str(folders / "clip")}))
        source = tmp_path
    else:
        source = folders / kind
    encoder = TextEncoder.from_pretrained(source)
    emb = encoder.encode(TEXTS)
    assert emb.shape == (2, encoder.embed_dim)
    assert encoder.embed_dim == (32 if kind == "longclip" else 24)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])
    torch.testing.assert_close(encoder.encode(TEXTS[:1]), emb[:1])  # padding does not change the result


def test_missing_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError):
        KeyframeDecoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(InputError):
        KeyframeEncoder.from_pretrained(tmp_path)
    with pytest.raises(InputError):
        TextEncoder.from_pretrained(tmp_path / "nope")


def test_sdxl_decoder_round_trip_is_identical(decoder_folder):
    folder, decoder = decoder_folder
    loaded = KeyframeDecoder.from_pretrained(folder)
    assert loaded.image_size == 32 and loaded.vae is not None and loaded.scheduler_name == "euler"
    tokens, faces, mask, text = conditions()
    args = dict(num_inference_steps=2, guidance_scale=3.0)
    a = decoder.generate(tokens, faces, mask, text, generator=torch.Generator().manual_seed(7), **args).images
    b = loaded.generate(tokens, faces, mask, text, generator=torch.Generator().manual_seed(7), **args).images
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_sdxl_decoder_seed_cfg_and_schedulers(decoder_folder):
    _, decoder = decoder_folder
    tokens, faces, mask, text = conditions()

    def render(seed=7, **kw):
        kw = {"num_inference_steps": 2, "guidance_scale": 1.0} | kw
        return decoder.generate(tokens, faces, mask, text, generator=torch.Generator().manual_seed(seed), **kw).images

    base = render()
    np.testing.assert_array_equal(base, render())
    assert not np.array_equal(base, render(seed=8))
    assert not np.array_equal(base, render(guidance_scale=4.0))
    for name in ("ddim", "euler", "dpmpp"):
        images = render(scheduler=name, num_inference_steps=3)
        assert images.shape == (2, 32, 32, 3)
        np.testing.assert_array_equal(images, render(scheduler=name, num_inference_steps=3))
    decoder.set_scheduler("dpmpp")
    assert decoder.scheduler.config.algorithm_type == "dpmsolver++"
    decoder.set_scheduler("euler")
    with pytest.raises(InputError, match="Unknown scheduler"):
        decoder.set_scheduler("heun-ish")
    with pytest.raises(InputError, match="tokens of shape"):
        decoder.generate(tokens[:, :1], faces, mask, text, num_inference_steps=1)


def test_context_groups_and_null_embeddings():
    torch.manual_seed(0)
    ctx = ContextProjector(num_tokens=2, token_dim=16, max_faces=3, text_dim=24, cross_attention_dim=64, pooled_dim=32)
    tokens, faces, mask, text = conditions()
    context, attn_mask, pooled = ctx(tokens, faces, mask, text)
    assert context.shape == (2, 6, 64) and pooled.shape == (2, 32)
    assert attn_mask.tolist() == [[True, True, True, True, False, True], [True, True, True, False, False, True]]
    # dropping the faces of sample 0 only gives the null face in slot 0 and changes nothing else in sample 1
    dropped, dmask, _ = ctx(tokens, faces, mask, text, drop_faces=torch.tensor([True, False]))
    assert dmask[0].tolist() == [True, True, True, False, False, True]
    torch.testing.assert_close(dropped[1], context[1])
    null, nmask, _ = ctx(None, None, None, None, batch_size=2)
    torch.testing.assert_close(null[0], null[1])  # the null context does not depend on the sample
    torch.testing.assert_close(dropped[0, 2], null[0, 2])  # dropped faces -> the null face in slot 0
    assert not torch.allclose(null[0, :2], context[0, :2])
    no_faces = torch.zeros(2, 2, dtype=torch.bool)
    _, empty_mask, _ = ctx(tokens, faces, no_faces, text)
    assert empty_mask[:, 2:5].tolist() == [[True, False, False]] * 2  # nobody in the shot -> null face


def test_decoder_keeps_its_sampling_settings_through_save(decoder_folder, tmp_path):
    folder, _ = decoder_folder
    decoder = KeyframeDecoder.from_pretrained(folder)
    decoder.sampling = {"num_inference_steps": 7, "guidance_scale": 3.0}
    decoder.save_pretrained(tmp_path / "again")
    assert KeyframeDecoder.from_pretrained(tmp_path / "again").sampling == {"num_inference_steps": 7, "guidance_scale": 3.0}
    from mdream.stages.definitions import sampling_defaults

    assert sampling_defaults(tmp_path / "again") == (7, 3.0, 0.0)
    decoder.sampling["identity_guidance_scale"] = 2.0
    decoder.save_pretrained(tmp_path / "third")
    assert sampling_defaults(tmp_path / "third") == (7, 3.0, 2.0)


def test_identity_guidance_pushes_along_the_face_direction(decoder_folder):
    """out = uncond + g (full - uncond) + s (full - no_faces): checked against the three branches run by hand."""
    _, decoder = decoder_folder
    tokens, faces, mask, text = conditions()

    def render(faces=faces, mask=mask, **kw):
        kw = {"num_inference_steps": 2, "guidance_scale": 2.0} | kw
        return decoder.generate(tokens, faces, mask, text, generator=torch.Generator().manual_seed(3), **kw).images

    plain = render()
    np.testing.assert_array_equal(plain, render(identity_guidance_scale=0.0))
    pushed = render(identity_guidance_scale=3.0)
    assert not np.array_equal(plain, pushed)
    # without faces there is no face direction: identity guidance changes nothing
    np.testing.assert_array_equal(render(faces=None, mask=None), render(faces=None, mask=None, identity_guidance_scale=3.0))
    with pytest.raises(InputError, match="identity_guidance_scale"):
        render(identity_guidance_scale=-1.0)

    # generate's first model output, recorded at the scheduler, against the three branches run one by one
    from diffusers.utils.torch_utils import randn_tensor

    recorded = []
    make_scheduler = decoder.make_scheduler

    def recording_scheduler(name, config):
        sched = make_scheduler(name, config)
        step = sched.step

        def record(model_output, t, sample, **kw):
            recorded.append(model_output.clone())
            return step(model_output, t, sample, **kw)

        sched.step = record
        return sched

    decoder.make_scheduler = recording_scheduler
    try:
        render(num_inference_steps=1, identity_guidance_scale=3.0)
    finally:
        del decoder.make_scheduler
    sched = decoder.make_scheduler(decoder.scheduler_name, decoder.scheduler.config)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    noise = randn_tensor((2, 4, 16, 16), generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    model_in = sched.scale_model_input(noise, t)
    with torch.no_grad():
        full, null, no_faces = (decoder.predict(model_in, t.expand(2), *decoder.context(*groups, batch_size=2))
                                for groups in ((tokens, faces, mask, text), (None, None, None, None), (tokens, None, None, text)))
    expected = null + 2.0 * (full - null) + 3.0 * (full - no_faces)
    torch.testing.assert_close(recorded[0], expected, atol=1e-4, rtol=1e-4)


def test_pooled_face_slots_know_who_stands_where():
    """pooled_faces="slots": swapping two faces between positions changes the pooled vector; "mean" cannot tell."""
    tokens, faces, _, text = conditions()
    mask = torch.ones(faces.shape[:2], dtype=torch.bool)
    swapped = faces[:, [1, 0]]
    for mode, differs in (("slots", True), ("mean", False)):
        torch.manual_seed(0)
        ctx = ContextProjector(num_tokens=2, token_dim=16, max_faces=3, text_dim=24, cross_attention_dim=64,
                               pooled_dim=32, pooled_faces=mode)
        # zero the learned slot tags so that only the pooling decides whether order matters
        with torch.no_grad():
            ctx.face_slot.zero_()
        _, _, pooled = ctx(tokens, faces, mask, text)
        _, _, pooled_swapped = ctx(tokens, swapped, mask, text)
        assert (not torch.allclose(pooled, pooled_swapped, atol=1e-6)) == differs, mode
    with pytest.raises(InputError):
        ContextProjector(pooled_faces="sum")


def test_identity_head_loss_counts_occupied_slots_only():
    from mdream.models.compressor import TokenIdentityHead

    torch.manual_seed(0)
    head = TokenIdentityHead(num_tokens=2, token_dim=16, max_faces=3, face_dim=8, hidden_dim=32)
    tokens = torch.randn(4, 2, 16)
    faces = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    mask = torch.tensor([[True, False, True]] * 4)
    loss = head.loss(tokens, faces, mask)
    other = faces.clone()
    other[:, 1] = torch.randn(4, 8)  # an empty slot's target is never read
    torch.testing.assert_close(head.loss(tokens, other, mask), loss)
    # a few steps on a fixed batch lower it (the head can learn the mapping)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        head.loss(tokens, faces, mask).backward()
        opt.step()
    assert head.loss(tokens, faces, mask) < 0.5 * loss


def test_one_training_step_through_loaded_models(folders, decoder_folder):
    folder, _ = decoder_folder
    decoder = KeyframeDecoder.from_pretrained(folder)
    torch.manual_seed(0)
    encoder = KeyframeEncoder.from_vision_model(str(folders / "clip"), num_tokens=2, token_dim=16, width=32, num_heads=2)
    text_encoder = TextEncoder.from_pretrained(folders / "clip")
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    _, faces, mask, _ = conditions()
    params = [*encoder.compressor.parameters(), *decoder.unet.parameters(), *decoder.context.parameters()]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = decoder.diffusion_loss(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1,
        encoder(frames), faces, mask, text_encoder.encode(TEXTS), generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in encoder.vision_model.parameters())  # CLIP stays frozen
    assert all(p.grad is None for p in decoder.vae.parameters())
    assert encoder.compressor.queries.grad is not None and encoder.compressor.queries.grad.abs().sum() > 0
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_pixel_weight_reaches_the_latent_grid(decoder_folder):
    """An image-resolution weight (e.g. the characters' pixels) is area-resized to the VAE's latent grid."""
    folder, _ = decoder_folder
    decoder = KeyframeDecoder.from_pretrained(folder)
    frames = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = torch.randn(2, decoder.num_tokens, decoder.context.config.token_dim)

    def loss(weight=None):
        return decoder.diffusion_loss(frames, tokens, drop_probs=(0, 0, 0), snr_gamma=None, timestep_power=1.0,
                                      generator=torch.Generator().manual_seed(0), pixel_weight=weight)

    with torch.no_grad():
        plain = loss()
        torch.testing.assert_close(loss(torch.full((2, 1, 32, 32), 3.0)), plain)
        left = torch.zeros(2, 1, 32, 32)
        left[..., :16] = 1.0
        torch.testing.assert_close((loss(left) + loss(1 - left)) / 2, plain)


def test_sdxl_speed_benchmark_runs_both_renderers_on_one_unet():
    """The GPU timing script (benchmarks/bench_sdxl_render.py), run with the tiny SDXL-shaped configs."""
    from benchmarks.bench_sdxl_render import build, measure

    decoder, pipe = build("tiny", "cpu", torch.float32)
    assert pipe.unet is decoder.unet and pipe.vae is decoder.vae
    result = measure("tiny", "cpu", torch.float32, steps=2, guidance=2.0, repeats=1)
    assert result["resolution"] == 32
    assert len(result["rows"]) == 3 and "diffusers StableDiffusionXLPipeline" in result["rows"]
    assert all(seconds > 0 and kernels is None and peak is None for seconds, kernels, peak in result["rows"].values())


def test_fp16_vae_runs_in_fp32_when_its_config_forces_upcast():
    """SDXL's VAE overflows in fp16, so (as diffusers' SDXL pipeline does) it encodes and decodes in fp32, then
    goes back to fp16; a VAE whose config does not ask for it stays fp16 throughout."""
    decoder = sdxl_decoder()
    seen = []
    decoder.vae.decoder.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    decoder.vae.encoder.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    for force_upcast, expected in ((True, torch.float32), (False, torch.float16)):
        decoder.vae.register_to_config(force_upcast=force_upcast)
        decoder.vae.to(torch.float16)
        seen.clear()
        with torch.no_grad():
            latents = decoder.images_to_sample(torch.rand(1, 3, 32, 32) * 2 - 1)
            images = decoder.sample_to_images(latents)
        assert seen == [expected, expected]
        assert decoder.vae.dtype == torch.float16
        assert latents.dtype == torch.float16 and images.dtype == expected


def test_a_mask_with_nothing_masked_is_dropped_without_changing_pixels(decoder_folder, monkeypatch):
    """generate() passes no key mask when every context entry is attended (a full cast, no CFG null branch):
    the mask would only cost host time, and the pixels are those of the masked call. An empty face slot or the
    CFG null branch (one null face, the other slots masked) keeps the mask."""
    _, decoder = decoder_folder
    tokens, _, _, text = conditions(batch=1)
    three = torch.nn.functional.normalize(torch.randn(1, 3, 512, generator=torch.Generator().manual_seed(4)), dim=-1)
    predict = KeyframeDecoder.predict
    masks_seen = []

    def render(faces, mask, guidance, force_mask=False):
        def recording_predict(self, sample, t, context, mask, pooled):
            masks_seen.append(mask)
            if force_mask and mask is None:
                mask = torch.ones(context.shape[:2], dtype=torch.bool)
            return predict(self, sample, t, context, mask, pooled)

        masks_seen.clear()
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(KeyframeDecoder, "predict", recording_predict)
            return decoder.generate(tokens, faces, mask, text, num_inference_steps=2, guidance_scale=guidance,
                                    generator=torch.Generator().manual_seed(3)).images

    full_cast = torch.ones(1, 3, dtype=torch.bool)
    for mask, guidance in ((torch.tensor([[True, True, False]]), 1.0), (full_cast, 2.0)):
        render(three, mask, guidance)
        assert masks_seen and all(seen is not None and not bool(seen.all()) for seen in masks_seen)
    dropped = render(three, full_cast, 1.0)
    assert masks_seen and all(seen is None for seen in masks_seen)
    forced = render(three, full_cast, 1.0, force_mask=True)
    assert np.abs(dropped.astype(int) - forced.astype(int)).max() <= 1
