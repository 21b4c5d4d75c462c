"""Token heads: the transformer's hidden state -> a distribution over one continuous keyframe token.

The autoregressive keyframe model (``mdream.models.keyframe_ar``) predicts each ``d``-dimensional
visual token from the hidden state at the position before it. A head turns that hidden state
``[B, H]`` into a training loss against the true token ``[B, d]`` and into samples at a temperature.
Heads are pluggable by name (:data:`TOKEN_HEADS`, :func:`build_head`):

- ``"gmm"`` (:class:`GMMHead`): a k-component diagonal Gaussian mixture, as MovieDreamer
  (Zhao et al. 2024, arXiv 2407.16655) uses for its continuous tokens.
- ``"diffusion"`` (:class:`DiffusionHead`): MAR's per-token diffusion loss (Li et al. 2024,
  "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838): a small MLP
  denoiser with AdaLN conditioning on the hidden state.

Following k-diffusion, the sampling algorithms are pure functions (:func:`gmm_log_prob`,
:func:`gmm_sample`, :func:`sample_ddim`); the heads only hold parameters and call them.
Random draws are made on the generator's device (CPU by default) and moved, so a seed gives the
same tokens on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
from torch import nn

from mdream.errors import InputError

LOG_2PI = math.log(2 * math.pi)


@dataclass
class HeadLoss:
    """What a head's ``loss`` returns."""

    loss: torch.Tensor
    """The scalar to minimise."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Its named components, detached (for logging)."""


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU when None) and moved to ``device``."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(device, dtype)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws on the generator's device (CPU when None), moved to ``device`` (float32)."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=where).to(device)


def check_temperature(temperature: float) -> None:
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise InputError(f"The sampling temperature must be a finite number >= 0, got {temperature}.")


class TokenHead(nn.Module):
    """Base class: ``loss(hidden, target)`` for training, ``sample(hidden, ...)`` for generation.

    ``config`` holds the constructor's keyword arguments (besides ``hidden_dim`` and ``token_dim``)
    so that :func:`build_head` rebuilds the head from a saved config.
    """

    name: str = ""

    def __init__(self, hidden_dim: int, token_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.token_dim = token_dim
        self.config: dict = {}

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadLoss:
        raise NotImplementedError

    def sample(self, hidden: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, hidden: torch.Tensor, target: torch.Tensor | None = None) -> None:
        if hidden.ndim != 2 or hidden.shape[1] != self.hidden_dim:
            raise InputError(f"The token head takes hidden states [B, {self.hidden_dim}], got {tuple(hidden.shape)}.")
        if target is not None and tuple(target.shape) != (hidden.shape[0], self.token_dim):
            raise InputError(f"Target tokens must be [{hidden.shape[0]}, {self.token_dim}], got {tuple(target.shape)}.")


# ---- Gaussian mixture ---------------------------------------------------------------------------
def gmm_log_prob(logits: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Log density of ``x`` under a diagonal Gaussian mixture (Bishop 1994, "Mixture Density Networks").

    logits [B, k] (unnormalised mixture weights), means and stds [B, k, d], x [B, d] -> [B].
    log p(x) = logsumexp_k( log pi_k + sum_d log N(x_d; mu_kd, sigma_kd) ), computed in log space.
    """
    z = (x.unsqueeze(1) - means) / stds  # [B, k, d]
    component = -0.5 * (z * z + LOG_2PI) - torch.log(stds)  # [B, k, d]
    return torch.logsumexp(F.log_softmax(logits, dim=-1) + component.sum(-1), dim=-1)


def gmm_mean(logits: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The mixture's mean sum_k pi_k mu_k: [B, k], [B, k, d] -> [B, d]."""
    return (F.softmax(logits, dim=-1).unsqueeze(-1) * means).sum(1)


def gmm_sample(
    logits: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One draw per row from a diagonal Gaussian mixture at a temperature -> [B, d].

    Temperature as in Sketch-RNN (Ha & Eck 2018): component weights softmax(logits / tau), each
    component's standard deviation times sqrt(tau). tau = 1 samples the model's distribution;
    tau = 0 returns the mean of the most likely component (greedy).
    """
    check_temperature(temperature)
    b, k, d = means.shape
    if temperature == 0:
        best = logits.argmax(-1)  # [B]
        return means[torch.arange(b, device=means.device), best]
    probs = F.softmax(logits.float() / temperature, dim=-1)  # [B, k]
    u = rand((b, 1), generator, probs.device)
    # inverse CDF of the categorical: the first component whose cumulative weight exceeds u
    choice = (probs.cumsum(-1) <= u).sum(-1).clamp(max=k - 1)  # [B]
    rows = torch.arange(b, device=means.device)
    mu, sigma = means[rows, choice], stds[rows, choice]  # [B, d]
    noise = randn((b, d), generator, means.device, means.dtype)
    return mu + sigma * math.sqrt(temperature) * noise


class GMMHead(TokenHead):
    """k-component diagonal Gaussian mixture over the token: 2kd + k outputs (means, stds, weights).

    Loss = ``nll_weight`` * NLL per dimension + ``l1_weight`` * |mean - x| + ``l2_weight`` * (mean - x)^2,
    where mean is the mixture mean; the regression terms keep the mixture centred on the data
    early in training. Standard deviations are ``min_std + softplus(raw)``: the floor keeps the
    NLL from rewarding collapsed components.
    """

    name = "gmm"

    def __init__(
        self,
        hidden_dim: int,
        token_dim: int,
        num_components: int = 8,
        width: int | None = None,
        min_std: float = 1e-3,
        nll_weight: float = 1.0,
        l1_weight: float = 0.5,
        l2_weight: float = 0.5,
    ):
        super().__init__(hidden_dim, token_dim)
        if num_components < 1:
            raise InputError(f"The GMM head needs at least one component, got {num_components}.")
        if min_std <= 0:
            raise InputError(f"min_std must be > 0, got {min_std}.")
        width = width or hidden_dim
        self.config = {"num_components": num_components, "width": width, "min_std": min_std,
                       "nll_weight": nll_weight, "l1_weight": l1_weight, "l2_weight": l2_weight}
        k, d = num_components, token_dim
        self.trunk = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, width), nn.GELU())
        self.out = nn.Linear(width, 2 * k * d + k)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def mixture(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [B, H] -> logits [B, k], means [B, k, d], stds [B, k, d] (float32)."""
        self._check(hidden)
        k, d = self.config["num_components"], self.token_dim
        raw = self.out(self.trunk(hidden.to(self.out.weight.dtype))).float()  # [B, 2kd + k]
        logits = raw[:, :k]
        means = raw[:, k : k + k * d].view(-1, k, d)
        stds = F.softplus(raw[:, k + k * d :].view(-1, k, d)) + self.config["min_std"]
        return logits, means, stds

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadLoss:
        self._check(hidden, target)
        logits, means, stds = self.mixture(hidden)
        x = target.float()
        nll = -gmm_log_prob(logits, means, stds, x).mean() / self.token_dim
        mean = gmm_mean(logits, means)
        l1 = (mean - x).abs().mean()
        l2 = (mean - x).pow(2).mean()
        cfg = self.config
        loss = cfg["nll_weight"] * nll + cfg["l1_weight"] * l1 + cfg["l2_weight"] * l2
        return HeadLoss(loss, {"nll": nll.detach(), "l1": l1.detach(), "l2": l2.detach()})

    @torch.no_grad()
    def sample(self, hidden: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        logits, means, stds = self.mixture(hidden)
        return gmm_sample(logits, means, stds, temperature, generator)


# ---- MAR-style diffusion head -------------------------------------------------------------------
def cosine_alphas_cumprod(num_timesteps: int) -> torch.Tensor:
    """alpha-bar of the cosine schedule (Nichol & Dhariwal 2021, "Improved DDPM"), [T] float64."""
    betas = betas_for_alpha_bar(num_timesteps, alpha_transform_type="cosine").double()
    return torch.cumprod(1 - betas, dim=0)


def sample_ddim(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    noise_sampler: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

    ``eps_model(x_t, t)`` predicts the noise; ``x`` is x_T; ``timesteps`` decreasing ints into
    ``alphas_cumprod``. For each step t -> s (the next timestep, or "clean" after the last):

        x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
        sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)
        x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z

    ``eta`` = 0 is deterministic DDIM, 1 is DDPM-like; ``noise_sampler(shape)`` draws z.
    """
    a = alphas_cumprod.to(x.device, torch.float64)
    steps = [int(t) for t in timesteps]
    for i, t in enumerate(steps):
        a_t = a[t]
        a_s = a[steps[i + 1]] if i + 1 < len(steps) else torch.ones((), dtype=torch.float64, device=x.device)
        eps = eps_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).double()
        xd = x.double()
        x0 = (xd - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
        direction = (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        xd = a_s.sqrt() * x0 + direction
        if eta > 0 and i + 1 < len(steps):
            if noise_sampler is None:
                raise InputError("sample_ddim with eta > 0 needs a noise_sampler.")
            xd = xd + sigma * noise_sampler(tuple(x.shape)).double()
        x = xd.to(x.dtype)
    return x


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNResBlock(nn.Module):
    """MAR's ResBlock: LayerNorm modulated by the condition (shift, scale), MLP, gated residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x, c [B, W]
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class AdaLNDenoiser(nn.Module):
    """MAR's SimpleMLPAdaLN: (x_t [B, d], t [B], condition [B, H]) -> predicted noise [B, d]."""

    def __init__(self, token_dim: int, hidden_dim: int, width: int, depth: int):
        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.cond_embed = nn.Linear(hidden_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, token_dim)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dtype = self.input_proj.weight.dtype
        c = self.time_embed(self.time_proj(t).to(dtype)) + self.cond_embed(cond.to(dtype))  # [B, W]
        h = self.input_proj(x.to(dtype))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.final(modulate(self.final_norm(h), shift, scale))


class DiffusionHead(TokenHead):
    """MAR's diffusion loss (Li et al. 2024, arXiv 2406.11838) for one continuous token.

    Training: t ~ U{0..T-1}, x_t = sqrt(a_t) x + sqrt(1 - a_t) eps over a cosine schedule, loss =
    ||eps - eps_theta(x_t, t, h)||^2; each token is noised ``batch_mul`` times per step (MAR uses 4),
    which is cheap because the denoiser is small. Sampling: ``num_sampling_steps`` DDIM steps.
    Temperature (as MAR's, a scale on the injected noise): x_T ~ N(0, tau^2 I) and, for ``eta`` > 0,
    each step's fresh noise times tau; tau = 0 gives one deterministic token per hidden state.
    """

    name = "diffusion"

    def __init__(
        self,
        hidden_dim: int,
        token_dim: int,
        width: int = 256,
        depth: int = 3,
        num_train_timesteps: int = 1000,
        num_sampling_steps: int = 10,
        eta: float = 0.0,
        batch_mul: int = 4,
    ):
        super().__init__(hidden_dim, token_dim)
        if num_sampling_steps < 1 or num_sampling_steps > num_train_timesteps:
            raise InputError(f"num_sampling_steps must be in 1..{num_train_timesteps}, got {num_sampling_steps}.")
        if batch_mul < 1:
            raise InputError(f"batch_mul must be >= 1, got {batch_mul}.")
        self.config = {"width": width, "depth": depth, "num_train_timesteps": num_train_timesteps,
                       "num_sampling_steps": num_sampling_steps, "eta": eta, "batch_mul": batch_mul}
        self.denoiser = AdaLNDenoiser(token_dim, hidden_dim, width, depth)
        # float64 on CPU, outside the module's state: ``.to(dtype)`` must not round the schedule
        self.alphas_cumprod = cosine_alphas_cumprod(num_train_timesteps)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> HeadLoss:
        self._check(hidden, target)
        m = self.config["batch_mul"]
        cond = hidden.repeat(m, 1)  # [mB, H]
        x0 = target.float().repeat(m, 1)  # [mB, d]
        device = x0.device
        where = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.config["num_train_timesteps"], (x0.shape[0],), generator=generator, device=where).to(device)
        noise = randn(tuple(x0.shape), generator, device)
        a = self.alphas_cumprod.to(device)[t].float().unsqueeze(-1)  # [mB, 1]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        mse = (self.denoiser(x_t, t, cond).float() - noise).pow(2).mean()
        return HeadLoss(mse, {"mse": mse.detach()})

    def sampling_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """DDIM's uniform skip, (S-1)k, ..., k, 0 with k = T // S (int64 [S], decreasing).

        As in the DDIM paper's code (and "leading" spacing in diffusers): it leaves out the last
        timesteps, whose alpha-bar is ~0 under the cosine schedule, so that x0 = (x_t - sqrt(1 - a_t)
        eps) / sqrt(a_t) does not blow the noise prediction's error up by 1 / sqrt(a_t).
        """
        steps = num_steps or self.config["num_sampling_steps"]
        if not 1 <= steps <= self.config["num_train_timesteps"]:
            raise InputError(f"The diffusion head samples with 1..{self.config['num_train_timesteps']} steps, got {steps}.")
        skip = self.config["num_train_timesteps"] // steps
        return torch.arange(steps - 1, -1, -1) * skip

    @torch.no_grad()
    def sample(self, hidden: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               num_steps: int | None = None) -> torch.Tensor:
        self._check(hidden)
        check_temperature(temperature)
        b, device = hidden.shape[0], hidden.device
        x = randn((b, self.token_dim), generator, device) * temperature
        eta = self.config["eta"]

        def noise_sampler(shape):
            return randn(shape, generator, device) * temperature

        return sample_ddim(lambda x_t, t: self.denoiser(x_t, t, hidden).float(), x, self.alphas_cumprod,
                           self.sampling_timesteps(num_steps), eta=eta, noise_sampler=noise_sampler)


TOKEN_HEADS: dict[str, type[TokenHead]] = {GMMHead.name: GMMHead, DiffusionHead.name: DiffusionHead}


def build_head(name: str, hidden_dim: int, token_dim: int, **config) -> TokenHead:
    """A token head by registry name (``gmm``, ``diffusion``) with its keyword arguments."""
    if name not in TOKEN_HEADS:
        raise InputError(f"Unknown token head '{name}'.", hint=f"Choose one of: {', '.join(TOKEN_HEADS)}.")
    try:
        return TOKEN_HEADS[name](hidden_dim, token_dim, **config)
    except TypeError as exc:
        raise InputError(f"Bad settings for the '{name}' token head: {exc}") from exc
