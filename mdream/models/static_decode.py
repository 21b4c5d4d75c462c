"""Fixed-shape decoding of a Llama-class backbone: a static KV cache, and CUDA graphs captured over it.

Eager decoding through transformers' dynamic cache is bound by kernel launches, not by memory: with a 7B backbone on
a large GPU one token step launches hundreds of small kernels and takes many times the time it takes to read the
weights once. A CUDA graph replays a captured step with one launch, but it needs every tensor of the step at a fixed
address and of a fixed shape. :class:`StaticDecoder` gives the backbone exactly that:

- the KV cache is transformers' ``StaticCache`` (one preallocated ``[B, heads, max_len, head_dim]`` tensor per
  layer, written in place at the layer's ``cumulative_length``, a device tensor);
- every call runs at a *bucket* length (1, 16, 32, ...): a chunk of L positions is padded to the next bucket, and
  what the padding writes into the cache after the chunk is overwritten by the next call, which starts at L;
- positions and the attention mask are the decoder's own inputs, built here into fixed buffers, so nothing in the
  forward reads a length on the host: position ``start + q`` attends to cache slot ``k`` where ``k <= start + q``
  only (so never to the cache's unwritten or stale slots).

With ``graphs=True`` (CUDA only) each bucket's forward is captured once into a ``torch.cuda.CUDAGraph`` (after a
warm-up on a side stream, as PyTorch's CUDA-graph notes prescribe) and replayed: copy the inputs into the static
buffers, set each layer's ``cumulative_length``, replay, read the output. Chunks longer than the largest bucket
(a long prefix, a recomputed window) run eagerly through the same static cache.

Tensor shapes: ``embeds [L, H]`` in, ``hidden [L, H]`` out; cache keys and values ``[1, kv_heads, max_len, hd]``.
"""

from __future__ import annotations

import bisect

import torch
from torch import nn
from transformers import StaticCache
from transformers.models.llama.modeling_llama import rotate_half

from mdream.errors import InputError

#: Chunk lengths a graph is captured for (a keyframe step's token is 1 position; a shot's script chunk a few dozen).
DEFAULT_BUCKETS = (1, 16, 32, 64, 128)


def rotate_keys(decoder: nn.Module, keys: torch.Tensor, shift: int) -> torch.Tensor:
    """Cached keys ``[B, heads, L, hd]`` moved ``shift`` positions along a Llama-style rotary embedding: keys are
    cached after it, ``R(p) k``, and rotations compose, ``R(shift) R(p) k = R(p + shift) k``."""
    position = torch.full((1, 1), shift, device=keys.device, dtype=torch.long)
    cos, sin = decoder.rotary_emb(keys, position)  # [1, 1, hd] each
    return keys * cos[:, None] + rotate_half(keys) * sin[:, None]  # Llama's apply_rotary_pos_emb, on keys


class StaticDecoder:
    """A backbone's decoder driven at fixed shapes over a static KV cache (see the module docstring).

    ``decoder``: the causal LM's transformer (``get_decoder()``), batch 1; ``max_len``: positions the cache holds
    (the generation window); ``buckets``: the padded chunk lengths; ``graphs``: capture and replay CUDA graphs;
    ``cache_keyword``: the keyword the decoder's forward takes its cache by.
    """

    def __init__(self, decoder: nn.Module, max_len: int, device: torch.device, dtype: torch.dtype,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS, graphs: bool = False, cache_keyword: str = "cache"):
        if graphs and torch.device(device).type != "cuda":
            raise InputError(f"CUDA graphs need a CUDA device, not {device}.", hint="Use graphs=False.")
        self.decoder = decoder
        self.cache_keyword = cache_keyword
        # SDPA takes a boolean mask (True: attend); eager attention adds its mask to the scores (the additive form)
        self.boolean_mask = getattr(decoder.config, "_attn_implementation", "sdpa") != "eager"
        self.device, self.dtype = torch.device(device), dtype
        self.buckets = tuple(sorted(set(buckets)))
        self.max_len = max_len
        # room for the padding of the last chunk, which writes past the held positions
        self.cache = StaticCache(config=decoder.config, max_cache_len=max_len + self.buckets[-1])
        self.length = 0  # positions held
        self.graphs = graphs
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self.replays = 0  # forwards served by a captured graph (the benchmark reports it)

    # ---- the cache ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.cache.layers[0].max_cache_len

    def _layers(self) -> list:
        return list(self.cache.layers)

    def _set_length(self, length: int) -> None:
        for layer in self._layers():
            if layer.is_initialized:
                layer.cumulative_length.fill_(length)
            else:  # before the first write the counter is a CPU tensor; lazy_initialization moves it
                layer.cumulative_length = torch.tensor(length, dtype=torch.long)

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated, graphs stay valid)."""
        self.length = 0

    def shift(self, start: int, count: int) -> None:
        """Cut positions ``[start, start + count)`` out of the cache, in place, and rotate the keys after them back
        by ``count`` positions (Llama's rotary embedding composes: ``R(p - d) k = R(-d) R(p) k``), as
        :func:`mdream.models.keyframe_ar.shift_cache` does for the dynamic cache."""
        if count <= 0:
            return
        end = self.length
        for layer in self._layers():
            if not layer.is_initialized:
                continue
            layer.keys[..., start : end - count, :] = rotate_keys(self.decoder, layer.keys[..., start + count : end, :],
                                                                  -count)
            layer.values[..., start : end - count, :] = layer.values[..., start + count : end, :].clone()
        self.length -= count

    # ---- one call ---------------------------------------------------------------------------
    def bucket(self, length: int) -> int | None:
        """The padded length a chunk of ``length`` runs at; None when it is longer than every bucket."""
        i = bisect.bisect_left(self.buckets, length)
        return self.buckets[i] if i < len(self.buckets) else None

    def _inputs(self, embeds: torch.Tensor, start: int, size: int) -> dict[str, torch.Tensor]:
        """The decoder's inputs for ``embeds [L, H]`` padded to ``size`` positions starting at ``start``."""
        length, hidden = embeds.shape
        padded = torch.zeros(1, size, hidden, device=self.device, dtype=self.dtype)
        padded[0, :length] = embeds
        positions = torch.arange(start, start + size, device=self.device)[None]  # [1, size]
        keys = torch.arange(self.capacity, device=self.device)  # [K]
        allowed = (keys[None, :] <= positions[0, :, None])[None, None]  # [1, 1, size, K]
        if self.boolean_mask:
            mask = allowed
        else:  # eager attention adds the mask to its scores
            mask = torch.zeros(allowed.shape, device=self.device, dtype=self.dtype)
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return {"inputs_embeds": padded, "position_ids": positions, "attention_mask": mask}

    def _forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.decoder(**inputs, use_cache=True, **{self.cache_keyword: self.cache})
        return out["last_hidden_state"][0]  # [size, H]

    @torch.no_grad()
    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """Feed ``embeds [L, H]`` after the held positions; returns their hidden states ``[L, H]``."""
        length = embeds.shape[0]
        if self.length + length > self.max_len:
            raise InputError(f"The static KV cache holds {self.max_len} positions; {self.length} are held and "
                             f"{length} more do not fit.", hint="Slide the window first.")
        embeds = embeds.to(self.device, self.dtype)
        size = self.bucket(length)
        if size is None:  # longer than any bucket: eagerly, at its own length
            self._set_length(self.length)
            hidden = self._forward(self._inputs(embeds, self.length, length))
        elif self.graphs:
            hidden = self._replay(embeds, size)
        else:
            self._set_length(self.length)
            hidden = self._forward(self._inputs(embeds, self.length, size))
        self.length += length
        return hidden[:length].clone()

    # ---- CUDA graphs ------------------------------------------------------------------------
    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        """Capture one forward at ``size`` positions (PyTorch's recipe: warm up on a side stream, then capture)."""
        static = self._inputs(torch.zeros(size, self.decoder.config.hidden_size, device=self.device,
                                          dtype=self.dtype), 0, size)
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._set_length(0)
                self._forward(static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._set_length(0)
        with torch.cuda.graph(graph):  # its own memory pool: graphs replay in any order
            output = self._forward(static)
        return graph, static, output

    def _replay(self, embeds: torch.Tensor, size: int) -> torch.Tensor:
        if size not in self._graphs:
            held = self.length  # capturing writes garbage at positions 0..size-1: keep what is held
            saved = [(layer.keys[..., :held, :].clone(), layer.values[..., :held, :].clone())
                     if layer.is_initialized else None for layer in self._layers()]
            self._graphs[size] = self._capture(size)
            for layer, kept in zip(self._layers(), saved, strict=True):
                if kept is not None:
                    layer.keys[..., :held, :] = kept[0]
                    layer.values[..., :held, :] = kept[1]
        graph, static, output = self._graphs[size]
        fresh = self._inputs(embeds, self.length, size)
        for name, tensor in fresh.items():
            static[name].copy_(tensor)
        self._set_length(self.length)
        graph.replay()
        self.replays += 1
        return output

