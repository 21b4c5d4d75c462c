"""x, y position channels on the renderer's UNet input (toy size; pretrained UNets keep 0)."""

from __future__ import annotations

import pytest
import torch

from mdream.errors import InputError


def _decoder(position_channels: int, in_channels: int | None = None):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from mdream.models.decoder import ContextProjector, KeyframeDecoder

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=3 + position_channels if in_channels is None else in_channels, out_channels=3,
        block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    context = ContextProjector(num_tokens=2, token_dim=16, face_dim=512, max_faces=3, text_dim=16, cross_attention_dim=16)
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False)
    return KeyframeDecoder(unet, context, scheduler, None, "ddim", position_channels=position_channels)


def test_position_grid_is_x_along_width_and_y_along_height():
    from mdream.models.decoder import KeyframeDecoder

    grid = KeyframeDecoder.position_grid(torch.zeros(2, 3, 4, 5))
    assert grid.shape == (2, 2, 4, 5)
    torch.testing.assert_close(grid[0, 0, 0], torch.linspace(-1, 1, 5))  # x: left to right, same on every row
    torch.testing.assert_close(grid[0, 0, 3], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(grid[1, 1, :, 2], torch.linspace(-1, 1, 4))  # y: top to bottom


def test_the_unet_sees_the_position_channels_and_renders_three_channel_images():
    decoder = _decoder(2)
    seen = []
    decoder.unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    out = decoder.generate(torch.randn(2, 2, 16), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 16, 16, 3)
    assert seen[0].shape == (2, 5, 16, 16)
    torch.testing.assert_close(seen[0][:, 3:], decoder.position_grid(seen[0][:, :3]))
    # the coordinates matter: the same UNet fed flipped coordinates predicts something else
    sample, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    context, mask, pooled = decoder.context(torch.randn(1, 2, 16), batch_size=1)
    with torch.no_grad():
        normal = decoder.predict(sample, t, context, mask, pooled)
        flipped = decoder.unet(torch.cat([sample, decoder.position_grid(sample).flip(-1)], 1), t,
                               encoder_hidden_states=context).sample
    assert not torch.allclose(normal, flipped)


def test_position_channels_survive_save_and_load_with_identical_pixels(tmp_path):
    from mdream.models.decoder import KeyframeDecoder

    decoder = _decoder(2)
    decoder.save_pretrained(tmp_path / "decoder")
    loaded = KeyframeDecoder.from_pretrained(tmp_path / "decoder")
    assert loaded.position_channels == 2
    tokens = torch.randn(1, 2, 16)
    a = decoder.generate(tokens, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images
    b = loaded.generate(tokens, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images
    assert (a == b).all()


def test_a_unet_without_room_for_the_channels_is_refused():
    with pytest.raises(InputError, match="input channels"):
        _decoder(2, in_channels=3)
    with pytest.raises(InputError, match="0 or 2"):
        _decoder(1)


def test_toy_decoder_attention_options_reach_the_unet():
    from mdream.training.tokenizer import TokenizerTrainingConfig, build_toy_decoder

    decoder = build_toy_decoder(TokenizerTrainingConfig(position_channels=2, attention_heads=2, only_cross_attention=True),
                                text_dim=16)
    assert decoder.unet.config.in_channels == 5 and decoder.position_channels == 2
    blocks = {n: m for n, m in decoder.unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"}
    assert blocks and all(b.attn1.heads == 2 for b in blocks.values())
    # diffusers' cross-attention mid block keeps its self-attention (8x8 at 32 px: cheap); the others drop it
    assert all(b.only_cross_attention for n, b in blocks.items() if not n.startswith("mid_block"))
    with pytest.raises(InputError, match="attention-heads"):
        build_toy_decoder(TokenizerTrainingConfig(attention_heads=3), text_dim=16)


@pytest.mark.parametrize(("field", "value"), [("position_channels", "two"), ("position_channels", 3),
                                              ("position_channels", True), ("sampling", [20, 1.0])])
def test_a_hand_edited_decoder_config_gets_an_error_that_names_the_file(tmp_path, field, value):
    import json

    from mdream.errors import CorruptArtifactError
    from mdream.models.decoder import DECODER_CONFIG, KeyframeDecoder

    _decoder(2).save_pretrained(tmp_path / "decoder")
    path = tmp_path / "decoder" / DECODER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(CorruptArtifactError, match=f"{DECODER_CONFIG}.*{field}"):
        KeyframeDecoder.from_pretrained(tmp_path / "decoder")
