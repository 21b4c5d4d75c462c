"""The autoregressive keyframe model and its token heads, on a tiny random Llama (hidden 32, 2 layers).

The backbone is built from a config, saved to a temp folder with the toy CLIP's tokenizer and loaded
back through the same ``from_pretrained`` code that loads LLaMA-2-7B or any Llama-class folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from transformers import AutoTokenizer

from mdream.errors import CorruptArtifactError, InputError
from mdream.models.keyframe_ar import (
    KEYFRAME_AR_CONFIG,
    KeyframeAR,
    KeyframeARConfig,
    MovieSample,
    ShotCondition,
    build_toy_llama,
)
from mdream.models.token_heads import (
    GMMHead,
    build_head,
    cosine_alphas_cumprod,
    gmm_log_prob,
    gmm_sample,
    sample_ddim,
)

TOY_CLIP = Path(__file__).resolve().parents[1] / "mdream" / "assets" / "models" / "toy-clip"
N, D, TEXT = 2, 128, 64


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(TOY_CLIP)
    torch.manual_seed(0)
    backbone = build_toy_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_model(folder: Path, head: str = "gmm", seed: int = 0, **head_config) -> KeyframeAR:
    torch.manual_seed(seed)
    config = KeyframeARConfig(num_tokens=N, token_dim=D, text_dim=TEXT, character_text=True, head=head,
                              head_config=head_config, context_window=512)
    return KeyframeAR.from_backbone(str(folder), config=config)


def shot(i: int, generator: torch.Generator) -> ShotCondition:
    faces = torch.nn.functional.normalize(torch.randn(3, 512, generator=generator), dim=-1)
    return ShotCondition(
        identifier=["harbor at dusk", "forest", "a kitchen at noon"][i % 3],
        descriptor_embed=torch.nn.functional.normalize(torch.randn(TEXT, generator=generator), dim=-1),
        face_embeds=faces,
        face_mask=torch.tensor([True, i % 2 == 0, i % 3 == 0]),
        character_text_embeds=torch.randn(3, TEXT, generator=generator),
    )


def movie(num_shots: int, seed: int = 0) -> tuple[list[ShotCondition], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [shot(i, g) for i in range(num_shots)], torch.randn(num_shots, N, D, generator=g)


# ---- loading, shapes ---------------------------------------------------------------------------
def test_save_and_load_through_from_pretrained(backbone_folder, tmp_path):
    model = make_model(backbone_folder)
    shots, tokens = movie(3)
    sample = MovieSample(shots, tokens, references=tokens[:1], prefix_text="harbor forest")
    model.save_pretrained(tmp_path / "ar")
    cfg = json.loads((tmp_path / "ar" / KEYFRAME_AR_CONFIG).read_text())
    assert cfg["_class_name"] == "KeyframeAR" and cfg["backbone"] == "backbone" and cfg["lora"] is None
    assert (cfg["num_tokens"], cfg["token_dim"], cfg["head"]) == (N, D, "gmm")
    assert cfg["head_config"]["num_components"] == 8  # defaults are written out
    loaded = KeyframeAR.from_pretrained(tmp_path / "ar")
    with torch.no_grad():
        a, b = model([sample]), loaded([sample])
    torch.testing.assert_close(a.hidden_states, b.hidden_states)
    torch.testing.assert_close(a.loss, b.loss)

    # a reference instead of a copy: the backbone's folder, relative to the saved one
    model.save_pretrained(tmp_path / "ref", backbone_reference=str(Path("..") / backbone_folder.name))
    assert not (tmp_path / "ref" / "backbone").exists()
    (tmp_path / backbone_folder.name).symlink_to(backbone_folder)
    with torch.no_grad():
        torch.testing.assert_close(KeyframeAR.from_pretrained(tmp_path / "ref")([sample]).loss, a.loss)


def test_forward_shapes_and_sequence_layout(backbone_folder):
    model = make_model(backbone_folder)
    shots, tokens = movie(4)
    samples = [MovieSample(shots, tokens), MovieSample(shots[:2], tokens[:2], references=tokens[2:])]
    out = model(samples)
    assert out.hidden_states.shape == (2, 4, N, 32)
    assert out.shot_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert out.hidden_states[1, 2:].abs().sum() == 0
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.parts) == {"nll", "l1", "l2"}
    # [SHOT] + identifier words + descriptor + present faces only + [FRAME]
    ident = len(model.tokenizer(shots[0].identifier, add_special_tokens=False)["input_ids"])
    assert model.condition_embeds(shots[0]).shape == (1 + ident + 1 + 3 + 1, 32)  # shot 0: all three slots
    ident = len(model.tokenizer(shots[1].identifier, add_special_tokens=False)["input_ids"])
    assert model.condition_embeds(shots[1]).shape == (1 + ident + 1 + 1 + 1, 32)  # shot 1: left slot only
    # the prediction positions: [FRAME] predicts tok_0, tok_0 predicts tok_1
    embeds, positions = model.sequence(samples[0])
    assert positions.shape == (4, N) and embeds.shape[0] == positions[-1, -1] + 2
    assert (positions[:, 1] - positions[:, 0] == 1).all()


def test_bad_inputs_are_input_errors(backbone_folder, tmp_path):
    model = make_model(backbone_folder)
    shots, tokens = movie(2)
    bad = ShotCondition("forest", torch.zeros(TEXT + 1))
    with pytest.raises(InputError, match="descriptor_embed"):
        model.condition_embeds(bad)
    with pytest.raises(InputError, match="tokens"):
        model([MovieSample(shots, tokens[:, :1])])
    with pytest.raises(InputError, match="given tokens"):
        model.eval().generate_movie(shots, given=[torch.zeros(N, D + 1), None])
    with pytest.raises(InputError, match="Unknown token head"):
        build_head("vq", 32, D)
    with pytest.raises(InputError, match="does not exist"):
        KeyframeAR.from_pretrained(tmp_path / "nothing")
    with pytest.raises(InputError, match="window"):
        model.generate_movie(shots, window=4)
    # a config that does not fit the saved weights
    model.save_pretrained(tmp_path / "ar", backbone_reference=str(backbone_folder))
    path = tmp_path / "ar" / KEYFRAME_AR_CONFIG
    path.write_text(path.read_text().replace('"num_components": 8', '"num_components": 3'))
    with pytest.raises(CorruptArtifactError, match="do not fit"):
        KeyframeAR.from_pretrained(tmp_path / "ar")


# ---- GMM head ----------------------------------------------------------------------------------
def test_gmm_log_prob_matches_torch_mixture():
    g = torch.Generator().manual_seed(3)
    b, k, d = 6, 5, 128
    logits = torch.randn(b, k, generator=g) * 2
    means = torch.randn(b, k, d, generator=g)
    stds = torch.rand(b, k, d, generator=g) + 0.05
    x = torch.randn(b, d, generator=g)
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, stds), 1)).log_prob(x)
    torch.testing.assert_close(gmm_log_prob(logits, means, stds, x), ref, rtol=1e-5, atol=1e-5)
    # and the head's loss: NLL per dimension of its own mixture
    head = GMMHead(32, d, num_components=k, l1_weight=0.0, l2_weight=0.0)
    hidden = torch.randn(b, 32, generator=g)
    lg, mu, sd = head.mixture(hidden)
    nll = -MixtureSameFamily(Categorical(logits=lg), Independent(Normal(mu, sd), 1)).log_prob(x).mean() / d
    out = head.loss(hidden, x)
    torch.testing.assert_close(out.loss, nll, rtol=1e-5, atol=1e-5)
    assert (sd >= head.config["min_std"]).all()


def test_gmm_sampling_follows_the_mixture_and_temperature():
    logits = torch.log(torch.tensor([[0.25, 0.75]])).expand(4000, 2)
    means = torch.tensor([[[-4.0], [4.0]]]).expand(4000, 2, 1)
    stds = torch.full((4000, 2, 1), 0.5)
    x = gmm_sample(logits, means, stds, 1.0, torch.Generator().manual_seed(0))
    right = x[:, 0] > 0
    assert abs(right.float().mean().item() - 0.75) < 0.03
    assert abs(x[right, 0].std().item() - 0.5) < 0.05
    cold = gmm_sample(logits, means, stds, 0.25, torch.Generator().manual_seed(0))
    assert (cold[:, 0] > 0).float().mean() > 0.95  # weights sharpened: pi^(1/tau)
    assert abs(cold[cold[:, 0] > 0, 0].std().item() - 0.25) < 0.03  # sigma * sqrt(tau)
    torch.testing.assert_close(gmm_sample(logits, means, stds, 0.0), torch.full((4000, 1), 4.0))
    with pytest.raises(InputError, match="temperature"):
        gmm_sample(logits, means, stds, -1.0)


# ---- diffusion head ----------------------------------------------------------------------------
def test_ddim_recovers_data_under_an_exact_denoiser():
    alphas = cosine_alphas_cumprod(1000)
    timesteps = torch.linspace(999, 0, 10).round().long()
    x0 = torch.tensor([[0.3, -1.2, 2.0]])

    def point_mass(x_t, t):  # the exact noise prediction when all data is x0
        a = alphas[t].float().unsqueeze(-1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_ddim(point_mass, start, alphas, timesteps), x0.expand(4, 3), rtol=1e-4, atol=1e-4)

    mu, s = 1.5, 0.4

    def gaussian(x_t, t):  # E[eps | x_t] for data ~ N(mu, s^2)
        a = alphas[t].float().unsqueeze(-1)
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s * s + 1 - a)

    start = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
    out = sample_ddim(gaussian, start, alphas, torch.linspace(999, 0, 50).round().long())
    assert abs(out.mean().item() - mu) < 0.03 and abs(out.std().item() - s) < 0.03
    # temperature scales x_T (what DiffusionHead.sample does): the deterministic flow narrows the spread
    out = sample_ddim(gaussian, 0.5 * start, alphas, torch.linspace(999, 0, 50).round().long())
    assert abs(out.std().item() - 0.5 * s) < 0.03


def test_diffusion_head_learns_a_conditional_point_mass():
    head = build_head("diffusion", 32, 16, width=64, depth=2, batch_mul=16)
    g = torch.Generator().manual_seed(0)
    hidden, target = torch.randn(4, 32, generator=g), 0.5 * torch.randn(4, 16, generator=g)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(300):
        loss = head.loss(hidden, target, g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.15
    greedy = head.sample(hidden, 0.0, g)  # each hidden state's own target, not the average of all four
    assert (greedy - target).abs().mean() < 0.1 < (greedy - target.mean(0)).abs().mean()
    draws = head.sample(hidden.repeat(20, 1), 1.0, g).view(20, 4, 16)
    assert (draws.mean(0) - target).abs().mean() < 0.15
    with pytest.raises(InputError, match="temperature"):
        head.sample(hidden, float("nan"))


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("head, config", [("gmm", {"num_components": 4}), ("diffusion", {"width": 64, "depth": 2})])
def test_training_overfits_a_tiny_batch(backbone_folder, head, config):
    model = make_model(backbone_folder, head, **config)
    shots, tokens = movie(3, seed=5)
    tokens = tokens * 0.5
    samples = [MovieSample(shots, tokens), MovieSample(shots[1:], tokens[1:], prefix_text="forest")]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        loss = model(samples, generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(math.isfinite(v) for v in losses)
    if head == "gmm":
        assert last < first - 1.0, losses
        # the overfit model's greedy prediction of the first shot lands near its true tokens
        model.eval()
        out = model.generate_movie(shots[:1], temperature=0.0)
        assert (out.tokens[0] - tokens[0]).abs().mean() < 0.5 * tokens[0].abs().mean()
    else:
        assert last < 0.7 * first, losses


# ---- generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("head, config", [("gmm", {}), ("diffusion", {"width": 32, "depth": 1, "num_sampling_steps": 4})])
def test_same_seed_gives_identical_tokens(backbone_folder, head, config):
    model = make_model(backbone_folder, head, **config).eval()
    shots, _ = movie(4)
    a = model.generate_movie(shots, generator=torch.Generator().manual_seed(7))
    b = model.generate_movie(shots, generator=torch.Generator().manual_seed(7))
    c = model.generate_movie(shots, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.allclose(a.tokens, c.tokens)
    assert a.tokens.shape == (4, N, D) and not a.given.any()


@pytest.mark.parametrize("window, rebuilds", [(512, 0), (48, 1)])
def test_kv_cache_matches_recomputation(backbone_folder, window, rebuilds):
    model = make_model(backbone_folder, "gmm").eval()
    shots, tokens = movie(6, seed=2)
    given = [None, tokens[1], None, None, tokens[4], None]
    kwargs = {"given": given, "references": tokens[:1], "prefix_text": "harbor", "window": window, "temperature": 0.8}
    cached = model.generate_movie(shots, generator=torch.Generator().manual_seed(1), slide="recompute", **kwargs)
    full = model.generate_movie(shots, generator=torch.Generator().manual_seed(1), use_cache=False, **kwargs)
    torch.testing.assert_close(cached.tokens, full.tokens, rtol=1e-4, atol=1e-4)
    assert torch.equal(cached.tokens[1], tokens[1]) and torch.equal(cached.tokens[4], tokens[4])
    assert cached.given.tolist() == [g is not None for g in given]
    assert (cached.rebuilds > 0) == (rebuilds > 0) and cached.rebuilds == full.rebuilds
    assert cached.cache_lengths == full.cache_lengths


def test_cache_stays_bounded_over_300_shots(backbone_folder):
    model = make_model(backbone_folder, "gmm").eval()
    g = torch.Generator().manual_seed(0)
    window = 64
    session = model.start_movie(references=torch.randn(1, N, D, generator=g), prefix_text="harbor", window=window,
                                slide="recompute")
    generator = torch.Generator().manual_seed(0)
    for i in range(300):
        session.step(shot(i, g), temperature=1.0, generator=generator)
        assert session.cache.get_seq_length() == session.cache_length <= window
        assert session.prefix.shape[0] + session.history <= window
    assert len(session.cache_lengths) == 300 and max(session.cache_lengths) <= window
    # shots here take 7..12 positions: the window slides every few shots, and never every shot (each
    # slide halves the history, which amortises the recomputation)
    assert 300 * 7 // window <= session.rebuilds <= 300 // 2
    assert sum(e.shape[0] for e in session.shots) == session.history


def test_a_shifting_window_slides_without_recomputing(backbone_folder):
    model = make_model(backbone_folder, "gmm").eval()
    g = torch.Generator().manual_seed(0)
    window = 64
    session = model.start_movie(references=torch.randn(1, N, D, generator=g), prefix_text="harbor", window=window)
    assert session.slide == "shift"  # "auto" on a Llama backbone
    generator = torch.Generator().manual_seed(0)
    for i in range(300):
        session.step(shot(i, g), temperature=1.0, generator=generator)
        assert session.cache.get_seq_length() == session.cache_length <= window
        assert session.cache_length == session.prefix.shape[0] + session.history - 1  # the last token is pending
        assert session.prefix.shape[0] + session.history <= window
    assert len(session.cache_lengths) == 300 and max(session.cache_lengths) <= window
    # as with recomputation, each slide halves the history, but cuts the cache instead of a pass over it
    assert session.rebuilds == 0 and 300 * 7 // window <= session.shifts <= 300 // 2
    assert sum(e.shape[0] for e in session.shots) == session.history


def test_a_shifted_cache_holds_the_positions_a_recomputation_gives(backbone_folder):
    """Layer 0's keys and values depend only on each position's input and its rotary position: after cuts
    they must equal a fresh pass over prefix + kept shots (a wrong rotation or an off-by-one cut fails)."""
    model = make_model(backbone_folder).eval()
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(2, N, D, generator=g)
    session = model.start_movie(references=refs, window=48, slide="shift")
    generator = torch.Generator().manual_seed(3)
    for i in range(30):
        session.step(shot(i, g), given=torch.randn(N, D, generator=g) if i % 3 == 0 else None, temperature=1.0,
                     generator=generator)
    assert session.shifts >= 3 and session.rebuilds == 0
    context = torch.cat([session.prefix, *session.shots])[:-1]  # [P + history - 1, H]
    with torch.no_grad():
        _, fresh = model.run_backbone(context[None], use_cache=True)
    shifted, recomputed = session.cache.layers[0], fresh.layers[0]
    assert shifted.keys.shape == recomputed.keys.shape
    torch.testing.assert_close(shifted.keys, recomputed.keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shifted.values, recomputed.values, rtol=1e-4, atol=1e-5)
    # deeper layers still carry the shots cut out (what StreamingLLM keeps), so they differ from a recomputation
    assert not torch.allclose(session.cache.layers[-1].values, fresh.layers[-1].values, atol=1e-4)


def test_slide_modes_are_checked(backbone_folder):
    model = make_model(backbone_folder).eval()
    with pytest.raises(InputError, match="slide must be"):
        model.start_movie(slide="drop")
    with pytest.raises(InputError, match="needs a KV cache"):
        model.start_movie(use_cache=False, slide="shift")
    assert model.start_movie(use_cache=False).slide == "recompute"


# ---- LoRA --------------------------------------------------------------------------------------
def test_lora_trains_only_the_adapters(backbone_folder, tmp_path):
    model = make_model(backbone_folder)
    before = {k: v.clone() for k, v in model.causal_lm.state_dict().items()}
    model.add_lora(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    trainable = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all(p.requires_grad for p in model.projectors.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    shots, tokens = movie(2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model([MovieSample(shots, tokens)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.causal_lm.state_dict()
    for name, value in before.items():  # base weights untouched (peft renames wrapped ones to base_layer)
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], value), name
    assert any(not torch.all(v == 0) for k, v in after.items() if "lora_B" in k)  # B starts at zero, then moved

    model.save_pretrained(tmp_path / "ar")
    assert (tmp_path / "ar" / "lora").is_dir() and not (tmp_path / "ar" / "backbone").exists()
    loaded = KeyframeAR.from_pretrained(tmp_path / "ar")
    assert loaded.lora_active
    with torch.no_grad():
        torch.testing.assert_close(loaded([MovieSample(shots, tokens)]).loss, model([MovieSample(shots, tokens)]).loss)

    toy = KeyframeAR.build_toy(str(TOY_CLIP), KeyframeARConfig(token_dim=D), hidden_size=32, num_layers=1)
    toy.add_lora(r=2, alpha=4)
    with pytest.raises(InputError, match="reference"):
        toy.save_pretrained(tmp_path / "toy")


# ---- few-shot references, the no-face-embeddings ablation, the shipped model -------------------
def test_references_change_the_prediction_deterministically(backbone_folder):
    model = make_model(backbone_folder).eval()
    shots, tokens = movie(3, seed=4)
    refs = torch.randn(2, N, D, generator=torch.Generator().manual_seed(9))

    def run(references):
        return model.generate_movie(shots, generator=torch.Generator().manual_seed(3), references=references,
                                    temperature=0.0).tokens

    without, with_refs = run(None), run(refs)
    assert torch.equal(with_refs, run(refs))  # the same seed and references: the same tokens
    assert not torch.allclose(without, with_refs, atol=1e-4)
    assert not torch.allclose(with_refs, run(refs.flip(0)), atol=1e-4)  # which frames, in which order, matters
    # the prefix: [BOS] + per reference [REF] and its N tokens
    bos = int(model.tokenizer.bos_token_id is not None)
    assert model.prefix_embeds(refs).shape[0] == bos + 2 * (1 + N)


def test_the_fixed_prefix_keeps_references_through_window_slides(backbone_folder):
    model = make_model(backbone_folder).eval()
    g = torch.Generator().manual_seed(0)
    shots = [shot(i, g) for i in range(30)]
    refs_a, refs_b = torch.randn(2, 2, N, D, generator=g)
    sessions = [model.start_movie(references=r, window=48, slide="recompute") for r in (refs_a, refs_b)]
    prefixes = [s.prefix.clone() for s in sessions]
    for i, sh in enumerate(shots[:-1]):  # the same history (given tokens) in both
        for s in sessions:
            s.step(sh, given=torch.zeros(N, D) + i * 0.01)
    assert all(s.rebuilds >= 3 for s in sessions)  # the oldest shots slid out several times
    for s, p in zip(sessions, prefixes, strict=True):
        assert torch.equal(s.prefix, p)  # the references are still the start of the context
        assert s.prefix.shape[0] + s.history <= 48
    # the first shot is long gone, the references are not: they still change the prediction
    a, b = (s.step(shots[-1], temperature=0.0, generator=torch.Generator().manual_seed(1)) for s in sessions)
    assert not torch.allclose(a, b, atol=1e-4)
    # and the cached context after the slides is exactly a recomputation over prefix + kept shots
    full = model.generate_movie(shots, given=[torch.zeros(N, D) + i * 0.01 for i in range(29)] + [None],
                                references=refs_a, window=48, temperature=0.0, use_cache=False,
                                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(full.tokens[-1], a, rtol=1e-4, atol=1e-4)


def test_without_faces_no_face_embedding_enters_the_sequence(backbone_folder, tmp_path):
    torch.manual_seed(0)
    config = KeyframeARConfig(num_tokens=N, token_dim=D, text_dim=TEXT, character_text=True, faces=False)
    model = KeyframeAR.from_backbone(str(backbone_folder), config=config)
    assert model.projectors.face is None
    g = torch.Generator().manual_seed(0)
    a = shot(0, g)
    other_faces = ShotCondition(a.identifier, a.descriptor_embed, torch.randn(3, 512, generator=g), a.face_mask,
                                a.character_text_embeds)
    # the cast slots are still there (slot + description embedding), whatever the face embeddings say
    ident = len(model.tokenizer(a.identifier, add_special_tokens=False)["input_ids"])
    assert model.condition_embeds(a).shape == (1 + ident + 1 + 3 + 1, 32)
    torch.testing.assert_close(model.condition_embeds(a), model.condition_embeds(other_faces))
    described = ShotCondition(a.identifier, a.descriptor_embed, a.face_embeds, a.face_mask, torch.randn(3, TEXT))
    assert not torch.allclose(model.condition_embeds(a), model.condition_embeds(described))
    # neither faces nor descriptions: no cast positions at all
    bare = KeyframeAR.from_backbone(str(backbone_folder), config=KeyframeARConfig(
        num_tokens=N, token_dim=D, text_dim=TEXT, character_text=False, faces=False))
    assert bare.condition_embeds(a).shape == (1 + ident + 1 + 1, 32)
    # the switch is saved with the model
    model.save_pretrained(tmp_path / "ar")
    loaded = KeyframeAR.from_pretrained(tmp_path / "ar")
    assert loaded.config.faces is False and loaded.projectors.face is None
    torch.testing.assert_close(loaded.condition_embeds(a), model.condition_embeds(a))


def test_the_shipped_toy_model_loads_and_generates():
    folder = Path(__file__).resolve().parents[1] / "mdream" / "assets" / "models" / "toy-ar"
    model = KeyframeAR.from_pretrained(folder).eval()
    cfg = model.config
    recipe = yaml.safe_load((folder.parents[1] / "recipes" / "ar-toy-cpu.yaml").read_text())
    assert cfg.faces == recipe["faces"] and cfg.max_references == recipe["max_references"]  # as the recipe trains it
    g = torch.Generator().manual_seed(0)
    shots = [ShotCondition("Ana in the village", torch.nn.functional.normalize(torch.randn(cfg.text_dim, generator=g), dim=0),
                           torch.nn.functional.normalize(torch.randn(3, cfg.face_dim, generator=g), dim=-1),
                           torch.tensor([True, False, False]), torch.randn(3, cfg.text_dim, generator=g))
             for _ in range(2)]
    out = model.generate_movie(shots, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, cfg.num_tokens, cfg.token_dim) and torch.isfinite(out.tokens).all()


def test_a_cache_that_cannot_be_cut_falls_back_to_recomputing(backbone_folder, monkeypatch):
    import mdream.models.keyframe_ar as keyframe_ar

    model = make_model(backbone_folder).eval()
    g = torch.Generator().manual_seed(0)
    shots = [shot(i, g) for i in range(20)]
    monkeypatch.setattr(keyframe_ar, "cache_is_shiftable", lambda cache: False)
    fallback = model.generate_movie(shots, window=48, temperature=0.0, slide="shift")
    recomputed = model.generate_movie(shots, window=48, temperature=0.0, slide="recompute")
    assert fallback.rebuilds == recomputed.rebuilds > 0
    torch.testing.assert_close(fallback.tokens, recomputed.tokens)
