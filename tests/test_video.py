"""The image-to-video model, its extension with an anchor, the video stage and the movie mux.

Tiny random SVD-shaped models built from configs, saved to a folder and loaded through ``from_pretrained``
(as diffusers' tests do); the stage runs through the CLI with a bundle that names such a model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from test_stages_fullsize import _build_bundle, _storyboard
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline, action_vector, sample_euler
from mdream.stages.preview import read_video_info, viewing_size
from mdream.training.video import VideoTrainingConfig, new_video_model

runner = CliRunner()


def tiny_clip(folder):
    """A random tiny CLIP folder (its vision tower embeds the anchor)."""
    from mdream.models.toy_clip import build_toy_clip, build_word_tokenizer, save_clip_folder

    tokenizer = build_word_tokenizer(["a frame"], max_length=8)
    clip = build_toy_clip(tokenizer, image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                          projection_dim=24)
    save_clip_folder(clip, tokenizer, folder / "clip")
    return folder / "clip"


def tiny_video_model(folder, clip_length: int = 4):
    """A random toy-shaped video model (pixel space folded 4x4) saved to ``folder``, loaded back."""
    torch.manual_seed(0)
    config = VideoTrainingConfig(image_encoder=str(tiny_clip(folder)), clip_length=clip_length, sample_steps=2)
    new_video_model(config).save_pretrained(folder / "video")
    return ImageToVideoModel.from_pretrained(folder / "video")


def tiny_svd_folder(folder):
    """A Stable Video Diffusion pipeline folder (diffusers layout: unet/, vae/, image_encoder/, scheduler/,
    model_index.json; no video.json) of tiny random parts, with the configs of diffusers' own SVD tests."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D"] * 2, latent_channels=4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=1))
    StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                 feature_extractor=CLIPImageProcessor(crop_size=32, size=32)).save_pretrained(folder)
    return folder


def test_a_plain_svd_folder_loads_and_draws_clips_through_its_vae(tmp_path):
    model = ImageToVideoModel.from_pretrained(tiny_svd_folder(tmp_path / "svd"))
    assert model.vae is not None and model.action_encoder is None and not model.config.pixel_space
    assert model.config.prediction == "v" and model.config.vae_scaling_factor == model.vae.config.scaling_factor
    assert (model.config.width, model.config.height) == (1024, 576)  # SVD's own size, without a video.json
    model.config.width = model.config.height = 64  # small frames, same code
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    out = ImageToVideoPipeline(model)(image, num_frames=6, clip_length=4, num_inference_steps=2,
                                      generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 6, 64, 64, 3) and len(out.clip_conditions) == 2  # 4 + 3 frames >= 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_video_model(tmp_path_factory.mktemp("video"))


def keyframe(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)


def test_a_saved_model_loads_through_from_pretrained_with_its_parts(model, tmp_path):
    assert model.config.pixel_space and model.vae is None and model.action_encoder is not None
    model.save_pretrained(tmp_path / "again")
    again = ImageToVideoModel.from_pretrained(tmp_path / "again")
    for a, b in zip(model.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_clip_has_the_requested_shape(model):
    out = ImageToVideoPipeline(model)(keyframe(), num_frames=4, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 4, 32, 32, 3) and out.frames.dtype == np.uint8
    assert len(out.clip_conditions) == 1


def test_extension_frame_count_and_each_clip_starts_from_the_last_frame(model):
    pipe = ImageToVideoPipeline(model)
    out = pipe(keyframe(), num_frames=11, clip_length=4, generator=torch.Generator().manual_seed(0))
    # 4 + 3 + 3 = 10 < 11: a fourth clip, cut to 11 frames
    assert out.frames.shape[1] == 11 and len(out.clip_conditions) == 4
    first = pipe.prepare_image(keyframe())
    assert torch.equal(out.clip_conditions[0], first)
    for i in range(1, 4):  # clip i's conditioning frame is frame 3 i of the movie (the previous clip's last)
        drawn = ((out.clip_conditions[i][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        assert torch.equal(drawn, torch.from_numpy(out.frames[0, 3 * i]))


def test_anchor_first_keeps_the_first_embedding_and_last_follows_the_clips(model):
    pipe = ImageToVideoPipeline(model)
    kw = {"num_frames": 7, "clip_length": 4}
    first = pipe(keyframe(), anchor="first", generator=torch.Generator().manual_seed(0), **kw)
    last = pipe(keyframe(), anchor="last", generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(first.anchor_embeds[0], first.anchor_embeds[1])
    assert torch.equal(first.anchor_embeds[0], last.anchor_embeds[0])  # the same first clip
    assert not torch.allclose(last.anchor_embeds[1], last.anchor_embeds[0])
    assert torch.allclose(last.anchor_embeds[1], model.encode_image(last.clip_conditions[1]))
    assert np.array_equal(first.frames[:, :4], last.frames[:, :4])
    assert not np.array_equal(first.frames[:, 4:], last.frames[:, 4:])


def test_the_action_changes_the_clip_and_words_map_to_the_vocabulary(model):
    c = model.config
    walk = action_vector(c, [("left", "walks briskly")], "wide")
    assert walk[c.action_vocab.index("walk")] == 1 and walk[-3] == 1 and walk.sum() == 2
    sit = action_vector(c, [("left", "sit")], "wide")
    pipe = ImageToVideoPipeline(model)
    a = pipe(keyframe(), 4, actions=walk[None], generator=torch.Generator().manual_seed(0)).frames
    b = pipe(keyframe(), 4, actions=sit[None], generator=torch.Generator().manual_seed(0)).frames
    assert not np.array_equal(a, b)


def test_bad_inputs_are_clear_errors(model):
    from mdream.errors import InputError

    pipe = ImageToVideoPipeline(model)
    with pytest.raises(InputError, match="anchor"):
        pipe(keyframe(), 4, anchor="middle")
    with pytest.raises(InputError, match="draws 32x32"):
        pipe(np.zeros((1, 16, 16, 3), np.uint8), 4)


def test_sample_euler_is_exact_for_a_point_mass():
    # D(x; sigma) = c: the ODE carries every x to c exactly at sigma = 0
    c = torch.full((2, 3), 0.5)
    x = sample_euler(lambda x, s: c, torch.randn(2, 3) * 10, torch.tensor([10.0, 3.0, 1.0, 0.0]))
    assert torch.allclose(x, c)


def test_preconditioning_svd_v_prediction_and_x0(model):
    """sigma_data 1 with v-prediction is SVD's denoiser; x0-prediction returns the UNet's output as it is."""
    import dataclasses

    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 4, 48, 8, 8, generator=g), torch.randn(1, 4, 48, 8, 8, generator=g)
    context, ids = torch.randn(1, 2, 24, generator=g), model.added_time_ids(1)
    sigma = torch.tensor(2.0)
    with torch.no_grad():
        raw = model.unet(torch.cat([x / (sigma**2 + 1).sqrt(), cond], dim=2), 0.25 * sigma.log().view(1),
                         encoder_hidden_states=context, added_time_ids=ids).sample
        v = model.denoise(x, sigma, cond, context, ids)
        assert torch.allclose(v, x / (sigma**2 + 1) - sigma / (sigma**2 + 1).sqrt() * raw, atol=1e-5)
        x0_model = ImageToVideoModel(dataclasses.replace(model.config, prediction="x0"), model.unet,
                                     model.image_encoder, model.scheduler, action_encoder=model.action_encoder)
        assert torch.allclose(x0_model.denoise(x, sigma, cond, context, ids), raw, atol=1e-5)


def test_a_residual_model_that_draws_no_motion_holds_its_keyframe(model):
    """With residual denoising, a UNet that predicts a zero clip (x0) gives the conditioning frame in every frame."""
    import copy
    import dataclasses

    still = copy.deepcopy(model)
    still.config = dataclasses.replace(model.config, residual=True, prediction="x0")
    torch.nn.init.zeros_(still.unet.conv_out.weight)
    torch.nn.init.zeros_(still.unet.conv_out.bias)
    out = ImageToVideoPipeline(still)(keyframe(3), num_frames=7, clip_length=4, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(out.frames[0], np.repeat(keyframe(3), 7, axis=0))


def test_a_training_step_runs_and_lowers_the_loss(tmp_path):
    from mdream.training.video import ClipSet, VideoTask, VideoTrainingModel

    torch.manual_seed(0)
    config = VideoTrainingConfig(image_encoder=str(tiny_clip(tmp_path)), clip_length=4)
    model = new_video_model(config)
    rng = np.random.default_rng(0)
    clips = ClipSet(rng.integers(0, 256, (4, 7, 32, 32, 3), dtype=np.uint8), np.zeros((4, model.config.action_dim), np.float32))
    task = VideoTask(VideoTrainingModel(model), clips, config)
    opt = torch.optim.AdamW(task.trainable(), lr=1e-3)
    batch = task.sample(np.random.default_rng(1), 4)
    losses = []
    for _ in range(5):
        loss = task.loss(task.model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_patch_anchor_tokens_start_with_the_pooled_embedding_and_draw_clips(tmp_path):
    torch.manual_seed(0)
    config = VideoTrainingConfig(image_encoder=str(tiny_clip(tmp_path)), clip_length=4, sample_steps=2,
                                 anchor_tokens="patches")
    new_video_model(config).save_pretrained(tmp_path / "video")
    patches = ImageToVideoModel.from_pretrained(tmp_path / "video")
    assert patches.config.anchor_tokens == "patches"
    frame = ImageToVideoPipeline.prepare_image(keyframe())
    tokens = patches.encode_image(frame)
    assert tokens.shape == (1, 1 + (32 // 8) ** 2, 24)  # the class token, then 4 x 4 patches
    patches.config.anchor_tokens = "pooled"
    pooled = patches.encode_image(frame)
    patches.config.anchor_tokens = "patches"
    assert torch.allclose(tokens[:, :1], pooled, atol=1e-5)
    out = ImageToVideoPipeline(patches)(keyframe(), num_frames=7, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 7, 32, 32, 3)
    with pytest.raises(Exception, match="anchor-tokens"):
        VideoTrainingConfig(anchor_tokens="all").check()


def test_colour_coherence_pulls_continuations_to_the_anchors_colours_only(model):
    from mdream.errors import InputError
    from mdream.models.video import match_colour

    frames, reference = torch.rand(2, 3, 8, 8) * 0.5 - 0.5, torch.rand(2, 3, 8, 8) * 0.8
    matched = match_colour(frames, reference, 1.0)
    assert torch.allclose(matched.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(matched.std(dim=(2, 3)), reference.std(dim=(2, 3)), atol=1e-4)
    assert torch.equal(match_colour(frames, reference, 0.0), frames)

    pipe = ImageToVideoPipeline(model)

    def draw(**kw):
        return pipe(keyframe(), num_frames=10, clip_length=4, generator=torch.Generator().manual_seed(0), **kw).frames

    plain, coherent = draw(colour_coherence=0.0), draw(colour_coherence=1.0)
    assert np.array_equal(plain[:, :4], coherent[:, :4])  # the first clip starts from the keyframe itself
    assert not np.array_equal(plain[:, 4:], coherent[:, 4:])
    # anchor="last": the anchor is the conditioning frame itself, so there is nothing to pull towards
    assert np.array_equal(draw(anchor="last", colour_coherence=0.0), draw(anchor="last", colour_coherence=1.0))
    with pytest.raises(InputError, match="colour_coherence"):
        draw(colour_coherence=1.5)


def test_action_guidance_pushes_away_from_the_cast_standing_still(model):
    from mdream.errors import InputError
    from mdream.models.video import still_actions

    c = model.config
    walk = action_vector(c, [("left", "walks"), ("right", "waves")], "close-up")
    still = still_actions(c, walk[None])[0]
    assert torch.equal(still, action_vector(c, [("left", "stands"), ("right", "stands")], "close-up"))
    assert torch.equal(still_actions(c, still[None])[0], still)  # a still cast stays still

    pipe = ImageToVideoPipeline(model)

    def draw(actions, **kw):
        return pipe(keyframe(), num_frames=7, clip_length=4, actions=actions[None],
                    generator=torch.Generator().manual_seed(0), **kw).frames

    plain, guided = draw(walk), draw(walk, action_guidance_scale=3.0)
    assert not np.array_equal(plain, guided)
    assert np.array_equal(draw(walk, action_guidance_scale=1.0), plain)
    # a shot whose cast stands already has nothing to push away from
    assert np.array_equal(draw(still), draw(still, action_guidance_scale=3.0))
    # with the image guidance too: both apply, in one batch
    both = draw(walk, action_guidance_scale=3.0, min_guidance_scale=2.0, max_guidance_scale=2.0)
    assert not np.array_equal(both, guided)
    with pytest.raises(InputError, match="action_guidance_scale"):
        draw(walk, action_guidance_scale=0.5)


def test_the_motion_weight_weighs_only_what_moves(tmp_path):
    from mdream.training.video import VideoTrainingModel

    torch.manual_seed(0)
    config = VideoTrainingConfig(image_encoder=str(tiny_clip(tmp_path)), clip_length=4, residual=True, prediction="x0")
    model = new_video_model(config)
    torch.nn.init.zeros_(model.unet.conv_out.weight)  # the UNet predicts a zero residual: "nothing moves"
    torch.nn.init.zeros_(model.unet.conv_out.bias)
    still = torch.rand(1, 3, 32, 32) * 2 - 1
    clip = still.unsqueeze(1).repeat(1, 4, 1, 1, 1)  # [1, 4, 3, 32, 32]
    clip[:, 1:, :, :8, :8] = -clip[:, 1:, :, :8, :8]  # one corner moves
    rng = torch.Generator().manual_seed(0)
    batch = {"clip": clip, "cond_frame": still, "anchor_frame": still, "actions": torch.zeros(1, model.config.action_dim),
             "sigma": torch.tensor([0.5]), "noise": torch.randn(1, 4, 48, 8, 8, generator=rng),
             "aug": torch.zeros(1, 3, 32, 32), "keep": torch.ones(1)}
    plain = VideoTrainingModel(model)(**batch)
    weighted = VideoTrainingModel(model, motion_weight=4.0)(**batch)
    # the error is all in the moving corner, so it weighs 1 + 4 there
    assert torch.allclose(weighted, 5 * plain, rtol=1e-5)
    batch["clip"] = still.unsqueeze(1).repeat(1, 4, 1, 1, 1)  # nothing moves: no error, nothing to weigh
    assert VideoTrainingModel(model, motion_weight=4.0)(**batch).item() == 0.0
    with pytest.raises(Exception, match="motion-weight"):
        VideoTrainingConfig(motion_weight=-1.0).check()


def test_drift_augmentation_degrades_only_continuations_conditioning_frames(tmp_path):
    from mdream.training.video import ClipSet, VideoTask, VideoTrainingModel, drift_frames

    frames = torch.rand(6, 3, 32, 32) * 2 - 1
    drifted = drift_frames(frames, np.random.default_rng(0))
    assert drifted.shape == frames.shape and drifted.abs().max() <= 1
    assert torch.equal(drifted, drift_frames(frames, np.random.default_rng(0)))  # seeded
    assert (drifted - frames).abs().mean(dim=(1, 2, 3)).min() > 0  # every frame changed

    config = VideoTrainingConfig(image_encoder=str(tiny_clip(tmp_path)), clip_length=4, drift_prob=1.0,
                                 last_anchor_prob=0.0)
    model = new_video_model(config)
    rng = np.random.default_rng(0)
    clips = ClipSet(rng.integers(0, 256, (8, 7, 32, 32, 3), dtype=np.uint8), np.zeros((8, model.config.action_dim), np.float32))
    batch = VideoTask(VideoTrainingModel(model), clips, config).sample(np.random.default_rng(3), 32)
    changed = (batch["cond_frame"] - batch["clip"][:, 0]).abs().flatten(1).amax(1) > 0  # [B]
    # a shot's first clip starts from its keyframe as it is; a continuation from a drifted frame, anchored on frame 0
    continuation = (batch["anchor_frame"] - batch["clip"][:, 0]).abs().flatten(1).amax(1) > 0
    assert changed.any() and (~changed).any()
    assert torch.equal(changed, continuation)


def test_init_starts_from_a_trained_model_and_refuses_another_shape(tmp_path):
    from mdream.errors import InputError
    from mdream.training.video import load_init

    trained = tiny_video_model(tmp_path / "a")
    config = VideoTrainingConfig(image_encoder=str(tmp_path / "a" / "clip"), clip_length=4, sample_steps=2)
    torch.manual_seed(1)
    fresh = new_video_model(config)
    assert not torch.equal(fresh.unet.conv_in.weight, trained.unet.conv_in.weight)
    load_init(fresh, str(tmp_path / "a" / "video"))
    assert torch.equal(fresh.unet.conv_in.weight, trained.unet.conv_in.weight)
    assert torch.equal(fresh.action_encoder.net[0].weight, trained.action_encoder.net[0].weight)

    wider = new_video_model(VideoTrainingConfig(image_encoder=str(tmp_path / "a" / "clip"), clip_length=4, channels=64))
    with pytest.raises(InputError, match="does not match this config"):
        load_init(wider, str(tmp_path / "a" / "video"))
    with pytest.raises(InputError, match="does not exist"):
        load_init(wider, str(tmp_path / "nowhere"))


def test_the_action_map_paints_each_slots_action_over_its_third_of_the_frame(model):
    from mdream.models.video import action_map

    c = dataclasses.replace(model.config, action_map=True)
    actions = torch.stack([action_vector(c, [("left", "walks"), ("right", "sits")], "wide"),
                           action_vector(c, [("center", "waves")], "close-up")])
    maps = action_map(c, actions, 4, 6)  # [B, V, 4, 6]: slots own columns 0-1, 2-3, 4-5
    assert maps.shape == (2, len(c.action_vocab), 4, 6) and c.action_map_channels == len(c.action_vocab)
    walk, wave, sit = (c.action_vocab.index(a) for a in ("walk", "wave", "sit"))
    assert torch.equal(maps[0, walk, :, :2], torch.ones(4, 2)) and maps[0, walk, :, 2:].sum() == 0
    assert torch.equal(maps[0, sit, :, 4:], torch.ones(4, 2)) and maps[0, sit, :, :4].sum() == 0
    assert maps[0, :, :, 2:4].sum() == 0  # nobody in the centre
    assert torch.equal(maps[1, wave, :, 2:4], torch.ones(4, 2)) and maps[1].sum() == 8  # the camera is not painted


def test_shot_paced_motion_gives_longer_shots_a_lower_motion_bucket(model):
    ids = model.added_time_ids(2, fps=8, shot_frames=40)
    assert ids[:, 1].tolist() == [model.config.motion_bucket_id] * 2  # SVD: one bucket whatever the shot's length
    paced = ImageToVideoModel(dataclasses.replace(model.config, shot_paced_motion=True), model.unet,
                              model.image_encoder, model.scheduler, action_encoder=model.action_encoder)
    L, bucket = paced.config.num_frames, paced.config.motion_bucket_id
    ids = paced.added_time_ids(3, fps=8, shot_frames=torch.tensor([L, 2 * L - 1, 10_000]))
    assert ids[:, 1].tolist() == [bucket, round(bucket * (L - 1) / (2 * L - 2)), 1]  # at least 1
    assert ids[:, 0].tolist() == [7] * 3 and paced.added_time_ids(1)[0, 1] == bucket


def test_training_shots_of_varied_length_show_the_start_of_their_motion(tmp_path):
    from mdream.eval.toy_samples import random_shot
    from mdream.toyworld import make_world, render_clip
    from mdream.training.video import VideoTask, VideoTrainingModel, render_clips

    world = make_world(0)
    shot = random_shot(world, np.random.default_rng(5))
    whole = render_clip(world, shot, 32, 20, np.random.default_rng(1))
    assert np.array_equal(render_clip(world, shot, 32, 20, np.random.default_rng(1), count=7), whole[:7])
    trained = tiny_video_model(tmp_path / "a")
    config = VideoTrainingConfig(image_encoder=str(tmp_path / "a" / "clip"), clip_length=4, max_shot_frames=40,
                                 shot_paced_motion=True, clips=24)
    model = new_video_model(config)
    assert model.config.shot_paced_motion and trained.unet.config.in_channels == model.unet.config.in_channels
    clips = render_clips(config, model.config, 24, seed=0)
    assert clips.shot_frames.min() >= 4 and clips.shot_frames.max() <= 40 and len(set(clips.shot_frames)) > 5
    short = np.flatnonzero(clips.shot_frames < 7)
    assert len(short) and all((clips.frames[i, clips.shot_frames[i]:] == clips.frames[i, clips.shot_frames[i] - 1]).all()
                              for i in short)  # the missing frames repeat the shot's last one
    task = VideoTask(VideoTrainingModel(model), clips, config)
    batch = task.sample(np.random.default_rng(0), 64)
    assert set(batch["shot_frames"].tolist()) <= set(clips.shot_frames.tolist())
    assert torch.isfinite(task.loss(task.model, batch)["loss"])


def test_the_heading_map_paints_which_way_each_walker_goes(model):
    from mdream.models.video import heading_map

    c = dataclasses.replace(model.config, action_map=True, heading_map=True)
    assert c.action_map_channels == len(c.action_vocab) + 1
    actions = torch.stack([action_vector(c, [("left", "walks"), ("right", "walks in")], "wide"),
                           action_vector(c, [("center", "walks"), ("right", "sits")], "medium")])
    maps = heading_map(c, actions, 4, 6)  # [B, 1, 4, 6]: slots own columns 0-1, 2-3, 4-5
    assert maps.shape == (2, 1, 4, 6)
    assert torch.equal(maps[0, 0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, -1.0]))  # the right one goes left
    assert torch.equal(maps[1, 0, 3], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0]))  # sitting goes nowhere
    flipped = dataclasses.replace(c, slot_headings=[-1.0, -1.0, 1.0])
    assert torch.equal(heading_map(flipped, actions, 4, 6), -maps)


def test_a_heading_map_starts_from_an_action_map_model_and_never_the_other_way(tmp_path):
    from mdream.errors import InputError
    from mdream.training.video import load_init

    tiny_video_model(tmp_path / "a")
    kw = dict(image_encoder=str(tmp_path / "a" / "clip"), clip_length=4, sample_steps=2)
    mapped = new_video_model(VideoTrainingConfig(**kw, action_map=True))
    mapped.save_pretrained(tmp_path / "mapped")
    headed = new_video_model(VideoTrainingConfig(**kw, action_map=True, heading_map=True))
    assert headed.unet.config.in_channels == mapped.unet.config.in_channels + 1
    load_init(headed, str(tmp_path / "mapped"))  # the heading channel is new: zero weight, the rest as trained
    w = headed.unet.conv_in.weight
    assert torch.equal(w[:, :-1], mapped.unet.conv_in.weight) and w[:, -1].abs().sum() == 0
    walk = action_vector(headed.config, [("right", "walks")], "wide")[None]
    pipe_kw = dict(num_frames=4, clip_length=4, actions=walk)
    drawn = ImageToVideoPipeline(headed)(keyframe(), generator=torch.Generator().manual_seed(0), **pipe_kw).frames
    before = ImageToVideoPipeline(mapped)(keyframe(), generator=torch.Generator().manual_seed(0), **pipe_kw).frames
    assert np.array_equal(drawn, before)
    headed.save_pretrained(tmp_path / "headed")
    assert ImageToVideoModel.from_pretrained(tmp_path / "headed").config.heading_map
    with pytest.raises(InputError, match="trained with `heading_map`"):
        load_init(new_video_model(VideoTrainingConfig(**kw, action_map=True)), str(tmp_path / "headed"))


def test_an_action_map_model_trains_draws_and_starts_from_a_model_without_one(tmp_path):
    from mdream.errors import InputError
    from mdream.training.video import ClipSet, VideoTask, VideoTrainingModel, load_init

    trained = tiny_video_model(tmp_path / "a")
    config = VideoTrainingConfig(image_encoder=str(tmp_path / "a" / "clip"), clip_length=4, sample_steps=2,
                                 action_map=True)
    torch.manual_seed(1)
    mapped = new_video_model(config)
    c = mapped.config
    assert mapped.unet.config.in_channels == trained.unet.config.in_channels + len(c.action_vocab)
    # from the model without the map: the new input channels start at zero, so it denoises as that model does
    load_init(mapped, str(tmp_path / "a" / "video"))
    w = mapped.unet.conv_in.weight
    assert torch.equal(w[:, : trained.unet.config.in_channels], trained.unet.conv_in.weight)
    assert w[:, trained.unet.config.in_channels:].abs().sum() == 0
    walk = action_vector(c, [("left", "walks")], "wide")[None]
    pipe_kw = dict(num_frames=4, clip_length=4, actions=walk)
    drawn = ImageToVideoPipeline(mapped)(keyframe(), generator=torch.Generator().manual_seed(0), **pipe_kw).frames
    before = ImageToVideoPipeline(trained)(keyframe(), generator=torch.Generator().manual_seed(0), **pipe_kw).frames
    assert np.array_equal(drawn, before)
    # saved and loaded, and with action guidance (its still branch gets the still map)
    mapped.save_pretrained(tmp_path / "mapped")
    again = ImageToVideoModel.from_pretrained(tmp_path / "mapped")
    assert again.config.action_map
    ImageToVideoPipeline(again)(keyframe(), action_guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                                **pipe_kw)
    # one training step moves the map's weights off zero
    rng = np.random.default_rng(0)
    clips = ClipSet(rng.integers(0, 256, (4, 7, 32, 32, 3), dtype=np.uint8), walk.repeat(4, 1).numpy())
    task = VideoTask(VideoTrainingModel(mapped), clips, config)
    opt = torch.optim.AdamW(task.trainable(), lr=1e-3)
    task.loss(task.model, task.sample(np.random.default_rng(1), 4))["loss"].backward()
    opt.step()
    assert mapped.unet.conv_in.weight[:, trained.unet.config.in_channels:].abs().sum() > 0
    # a video.json that asks for the map of a UNet trained without it is a clear error
    config_file = tmp_path / "a" / "video" / "video.json"
    data = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**data, "action_map": True}))
    with pytest.raises(InputError, match="input channels"):
        ImageToVideoModel.from_pretrained(tmp_path / "a" / "video")


# ---- the stage --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_bundle(tmp_path_factory):
    root = _build_bundle(tmp_path_factory.mktemp("vbundle"))
    tiny_video_model(root / "v", clip_length=4)
    shutil.move(root / "v" / "video", root / "video")
    data = yaml.safe_load((root / "bundle.yaml").read_text())
    data["components"]["video"] = {"path": "video"}
    (root / "bundle.yaml").write_text(yaml.safe_dump(data))
    return root


def _script(folder, bundle, n_shots=2, **output):
    path = _storyboard(folder, bundle)
    data = yaml.safe_load(path.read_text())
    data["arcs"][0]["shots"] = data["arcs"][0]["shots"][:n_shots]
    data["arcs"][0]["shots"][0]["duration"] = 1.0
    data["arcs"][0]["shots"][1]["duration"] = 0.75
    data["output"].update({"fps": 8, "clip_length": 4, **output})
    path.write_text(yaml.safe_dump(data))
    return path


def _invoke(*args):
    return runner.invoke(app, [*map(str, args), "--device", "cpu", "--quiet"])


def test_generate_muxes_the_clips_and_a_rerun_reuses_them(video_bundle, tmp_path):
    script = _script(tmp_path / "m", video_bundle, width=48, height=40)
    movie, cache = tmp_path / "out" / "movie.mp4", tmp_path / "c"
    result = _invoke("generate", script, "-o", movie, "--cache-dir", cache, "--json")
    assert result.exit_code == 0, result.output
    info = read_video_info(movie)
    assert (info.frames, info.fps) == (8 + 6, 8.0)
    assert (info.width, info.height) == viewing_size(48, 40) == (336, 280)  # upscaled for viewing
    assert (tmp_path / "out" / "movie" / "animatic.mp4").is_file()  # the previews are still written
    again = _invoke("video", script, "--cache-dir", cache, "--json")
    assert again.exit_code == 0 and '"produced": []' in again.output.replace("\n", "").replace("  ", "")
    crossfade = _invoke("generate", script, "-o", tmp_path / "x.mp4", "--cache-dir", cache, "--transition", "crossfade")
    assert crossfade.exit_code == 0, crossfade.output
    assert read_video_info(tmp_path / "x.mp4").frames == 14


def test_a_corrupt_clip_is_recomputed_by_the_stage_and_named_by_the_mux(video_bundle, tmp_path):
    from mdream.cache import ArtifactStore
    from mdream.errors import MdreamError
    from mdream.stages.movie import write_movie
    from mdream.stages.options import RunOptions
    from mdream.stages.pipeline import ArtifactSequence, Project, plan_keys
    from mdream.stages.registry import new_stages

    script, cache = _script(tmp_path / "m", video_bundle), tmp_path / "c"
    assert _invoke("generate", script, "-o", tmp_path / "a.mp4", "--cache-dir", cache).exit_code == 0
    project = Project.open(script, RunOptions(cache_dir=cache, device="cpu", quiet=True))
    keys = plan_keys(project, new_stages("video"))["video"]
    art = ArtifactStore(cache).open("video", keys[0])
    clip_file = art.path("clip")
    clip_file.write_bytes(clip_file.read_bytes()[:-7] + b"garbage")
    with pytest.raises(MdreamError, match="missing or corrupt"):
        write_movie(project, ArtifactSequence(project, "video", project.plan.shots, keys, "movie"), tmp_path / "b.mp4")
    result = _invoke("video", script, "--cache-dir", cache, "--json")
    assert result.exit_code == 0, result.output
    assert ArtifactStore(cache).open("video", keys[0]) is not None


def test_video_without_a_video_model_says_so_and_generate_keeps_the_animatic(tmp_path):
    bundle = _build_bundle(tmp_path / "b")
    script = _script(tmp_path / "m", bundle)
    result = _invoke("video", script, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1 and "has no video model" in result.output and "Traceback" not in result.output
    result = _invoke("generate", script, "-o", tmp_path / "movie.mp4", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0 and (tmp_path / "movie.mp4").is_file()


def test_a_video_json_with_an_unknown_prediction_is_a_clear_error(model, tmp_path):
    import json

    from mdream.errors import InputError

    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "video.json").read_text())
    (tmp_path / "m" / "video.json").write_text(json.dumps({**config, "prediction": "eps"}))
    with pytest.raises(InputError, match="prediction must be one of v, x0"):
        ImageToVideoModel.from_pretrained(tmp_path / "m")


def test_the_bundles_steps_and_guidance_reach_the_video_model_and_its_keys(video_bundle, tmp_path, monkeypatch):
    from mdream.models.video import ImageToVideoPipeline

    calls = []
    original = ImageToVideoPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append((kwargs.get("num_inference_steps"), kwargs.get("max_guidance_scale")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageToVideoPipeline, "__call__", recording)
    tuned = tmp_path / "tuned"
    shutil.copytree(video_bundle, tuned)
    data = yaml.safe_load((tuned / "bundle.yaml").read_text())
    data["components"]["video"].update({"steps": 1, "guidance": 1.5})
    (tuned / "bundle.yaml").write_text(yaml.safe_dump(data))
    cache = tmp_path / "c"
    plain = _invoke("generate", _script(tmp_path / "a", video_bundle), "-o", tmp_path / "a.mp4", "--cache-dir", cache)
    assert plain.exit_code == 0, plain.output
    recorded = json.loads((video_bundle / "video" / "video.json").read_text())
    own = (recorded["num_inference_steps"], recorded["max_guidance_scale"])
    assert own != (1, 1.5) and calls == [own] * 2  # the model's own video.json settings
    calls.clear()
    changed = _invoke("generate", _script(tmp_path / "b", tuned), "-o", tmp_path / "b.mp4", "--cache-dir", cache)
    assert changed.exit_code == 0, changed.output
    assert calls == [(1, 1.5)] * 2  # both shots drawn again: the settings are part of the clips' keys

    data["components"]["video"]["sampler"] = "ddim"
    (tuned / "bundle.yaml").write_text(yaml.safe_dump(data))
    refused = _invoke("generate", _script(tmp_path / "d", tuned), "-o", tmp_path / "d.mp4", "--cache-dir", cache)
    assert refused.exit_code != 0 and "samples with Euler steps" in refused.output
    assert "Traceback" not in refused.output
