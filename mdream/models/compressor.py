"""Token compressor: learned queries that read a frozen vision encoder's patch tokens.

MovieDreamer compresses each keyframe into a few continuous tokens. The compressor is a small
Perceiver-style transformer: ``num_tokens`` learned queries cross-attend to the (frozen) CLIP
patch tokens, then attend to each other, a few times over. Saved diffusers-style (config.json
of the constructor arguments + safetensors) through ``ModelMixin``/``ConfigMixin``.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class CompressorBlock(nn.Module):
    """Queries cross-attend to the patch tokens, self-attend, then an MLP (all pre-norm)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        # queries [B, N, W], patches [B, P, W]
        kv = self.norm_kv(patches)
        q = self.norm_q(queries)
        queries = queries + self.cross_attn(q, kv, kv, need_weights=False)[0]
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class TokenCompressor(ModelMixin, ConfigMixin):
    """Compress ``[B, P, vision_dim]`` patch tokens into ``[B, num_tokens, token_dim]`` keyframe tokens."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        vision_dim: int = 1024,
        num_tokens: int = 2,
        token_dim: int = 128,
        width: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.patch_proj = nn.Linear(vision_dim, width)
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(CompressorBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, token_dim)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        # patch_tokens [B, P, vision_dim] -> tokens [B, N, token_dim]
        patches = self.patch_proj(patch_tokens)
        queries = self.queries.unsqueeze(0).expand(patches.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, patches)
        return self.proj_out(self.norm_out(queries))


class TokenReconstructionHead(ModelMixin, ConfigMixin):
    """Training-only auxiliary head: predict the frozen encoder's view of the frame from the tokens.

    Predicting the (layer-normed) patch tokens and the image embedding from the N tokens forces
    the compressor to pack the frame's content (scene *and* identities) into its tokens from the
    first step, before the decoder has learned to listen (MACHINE-NOTES, toy experiment B/C).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_tokens: int = 2,
        token_dim: int = 128,
        num_patches: int = 64,
        vision_dim: int = 64,
        image_embed_dim: int = 64,
        hidden_dim: int = 512,
    ):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(num_tokens * token_dim, hidden_dim), nn.GELU())
        self.patch_head = nn.Linear(hidden_dim, num_patches * vision_dim)
        self.embed_head = nn.Linear(hidden_dim, image_embed_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tokens [B, N, D] -> patches [B, P, Dv], image embedding [B, E]
        hidden = self.trunk(tokens.flatten(1))
        patches = self.patch_head(hidden).view(tokens.shape[0], self.config.num_patches, self.config.vision_dim)
        return patches, self.embed_head(hidden)


class TokenIdentityHead(ModelMixin, ConfigMixin):
    """Training-only auxiliary head: read who stands where off the tokens, as face embeddings.

    For every cast slot (left / center / right) it predicts the face embedding of the character
    there and whether the slot is occupied. The targets are the face embeddings the ID-preserving
    renderer is trained with anyway (the cast's reference faces, in slot order), so the loss needs
    no labels beyond the renderer's own training data, at toy and at full size. It gives the
    compressor a direct signal to pack identities into its few tokens: the diffusion loss alone
    mostly rewards the background, which covers most pixels.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_tokens: int = 2, token_dim: int = 128, max_faces: int = 3, face_dim: int = 512,
                 hidden_dim: int = 512):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(num_tokens * token_dim, hidden_dim), nn.GELU(),
                                   nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.embed_head = nn.Linear(hidden_dim, max_faces * face_dim)
        self.occupied_head = nn.Linear(hidden_dim, max_faces)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tokens [B, N, D] -> face embeddings [B, K, face_dim], occupancy logits [B, K]
        hidden = self.trunk(tokens.flatten(1))
        embeds = self.embed_head(hidden).view(tokens.shape[0], self.config.max_faces, self.config.face_dim)
        return embeds, self.occupied_head(hidden)

    def loss(self, tokens: torch.Tensor, faces: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cosine distance to each occupied slot's face embedding + occupancy BCE (one scalar).

        tokens [B, N, D]; faces [B, K, face_dim] target embeddings; mask [B, K] bool, True where occupied.
        """
        embeds, occupied = self(tokens)
        mask_f = mask.to(embeds.dtype)
        cos = torch.nn.functional.cosine_similarity(embeds.float(), faces.float(), dim=-1)  # [B, K]
        identity = ((1 - cos) * mask_f).sum() / mask_f.sum().clamp(min=1)
        occupancy = torch.nn.functional.binary_cross_entropy_with_logits(occupied.float(), mask_f.float())
        return identity + occupancy
