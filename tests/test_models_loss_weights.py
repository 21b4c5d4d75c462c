"""The loss weighting and timestep sampling that made the toy tokenizer listen to its tokens."""

from __future__ import annotations

import pytest
import torch

from mdream.models.decoder import min_snr_weight, sample_timesteps


def test_min_snr_for_v_prediction_keeps_full_weight_at_high_noise():
    snr = torch.tensor([1e-4, 1.0, 4.0, 9.0, 99.0])
    w = min_snr_weight(snr, "v_prediction", gamma=5.0)
    # min(SNR + 1, 5) / (SNR + 1): 1 while SNR + 1 <= 5, then 5 / (SNR + 1)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.05]))


def test_min_snr_for_epsilon_and_sample_targets():
    snr = torch.tensor([0.5, 10.0])
    torch.testing.assert_close(min_snr_weight(snr, "epsilon", 5.0), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(min_snr_weight(snr, "sample", 5.0), torch.tensor([0.5, 5.0]))


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_sqrt_timestep_sampling_favours_high_noise(power):
    t = sample_timesteps(100_000, 1000, power, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    share_high = float((t >= 500).float().mean())
    expected = 1 - 0.5 ** (1 / power)  # P(u**power >= 0.5)
    assert share_high == pytest.approx(expected, abs=0.01)


def _tiny_decoder():
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from mdream.models.decoder import ContextProjector, KeyframeDecoder

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    context = ContextProjector(num_tokens=2, token_dim=16, face_dim=512, max_faces=3, text_dim=16, cross_attention_dim=16)
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=False)
    return KeyframeDecoder(unet, context, scheduler, None, "ddim")


def test_pixel_weight_is_a_weighted_mean_of_the_squared_error():
    decoder = _tiny_decoder()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = torch.randn(2, 2, 16)

    def loss(weight=None):
        return decoder.diffusion_loss(images, tokens, drop_probs=(0, 0, 0), snr_gamma=None, timestep_power=1.0,
                                      generator=torch.Generator().manual_seed(3), pixel_weight=weight)

    with torch.no_grad():
        plain = loss()
        # all-ones (or any constant) is the plain loss
        torch.testing.assert_close(loss(torch.ones(2, 1, 32, 32)), plain)
        torch.testing.assert_close(loss(torch.full((2, 1, 32, 32), 5.0)), plain)
        # weight only on the left half, then only on the right half: the plain loss lies between them
        left = torch.zeros(2, 1, 32, 32)
        left[..., :16] = 1.0
        a, b = loss(left), loss(1.0 - left)
        torch.testing.assert_close((a + b) / 2, plain)
        assert not torch.isclose(a, b)
