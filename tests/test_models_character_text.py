"""The cast's description embeddings in the renderer's face slots (what a face photo cannot show)."""

from __future__ import annotations

import pytest
import torch

from mdream.errors import InputError


def _projector(character_text_dim: int | None = 8):
    from mdream.models.decoder import ContextProjector

    torch.manual_seed(0)
    return ContextProjector(num_tokens=2, token_dim=16, face_dim=32, max_faces=3, text_dim=8, cross_attention_dim=16,
                            pooled_dim=16, pooled_faces="slots", character_text_dim=character_text_dim)


def test_descriptions_change_only_the_occupied_face_slots():
    projector = _projector()
    tokens, faces, text = torch.randn(2, 2, 16), torch.randn(2, 2, 32), torch.randn(2, 8)
    mask = torch.tensor([[True, False], [True, True]])
    tall, short = torch.randn(2, 2, 8), torch.randn(2, 2, 8)
    with torch.no_grad():
        a, key_mask, pooled_a = projector(tokens, faces, mask, text, character_text=tall)
        b, _, pooled_b = projector(tokens, faces, mask, text, character_text=short)
    # context: [tokens (2) ; face slots (3) ; descriptor (1)]; same faces, other descriptions: only the face slots move
    torch.testing.assert_close(a[:, :2], b[:, :2])
    torch.testing.assert_close(a[:, 5:], b[:, 5:])
    assert not torch.allclose(a[:, 2], b[:, 2]) and not torch.allclose(pooled_a, pooled_b)
    assert key_mask[0, 3].item() is False  # an empty slot stays masked out, whatever its description row holds


def test_descriptions_drop_with_the_face_group():
    projector = _projector()
    tokens, faces, mask = torch.randn(1, 2, 16), torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    dropped = torch.tensor([True])
    with torch.no_grad():
        a, key_mask, pooled_a = projector(tokens, faces, mask, None, drop_faces=dropped, character_text=torch.randn(1, 3, 8))
        b, _, pooled_b = projector(tokens, faces, mask, None, drop_faces=dropped, character_text=torch.randn(1, 3, 8))
    # what the UNet can see (attended entries, the pooled vector) is the same whatever the descriptions
    torch.testing.assert_close(a * key_mask[..., None], b * key_mask[..., None])
    torch.testing.assert_close(pooled_a, pooled_b)


def test_description_shape_is_checked_and_older_projectors_ignore_none(tmp_path):
    projector = _projector()
    with pytest.raises(InputError, match="character_text must be"):
        projector(torch.randn(1, 2, 16), torch.randn(1, 3, 32), None, None, character_text=torch.randn(1, 2, 8))
    projector.save_pretrained(tmp_path / "context")
    from mdream.models.decoder import ContextProjector

    loaded = ContextProjector.from_pretrained(tmp_path / "context")
    assert loaded.character_text_proj is not None and loaded.config.character_text_dim == 8
    assert _projector(None).character_text_proj is None
