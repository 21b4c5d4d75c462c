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
