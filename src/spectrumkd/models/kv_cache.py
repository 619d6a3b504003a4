"""A preallocated KV cache for the decode loop, and merging new rows into a running batch.

``DynamicCache`` grows every layer by concatenation, so each decode step copies the whole cache
(28% of a 128-row bf16 CPU step at 256 tokens of context, benchmarks/README.md). A
:class:`PreallocatedLayer` writes each step's keys and values into buffers sized once for the
prompt plus the token budget and hands attention views of the filled columns: the same values,
the same mask sizes (it behaves as a ``DynamicLayer`` whose tensors never move), no copies.

:func:`merge_rows` is what continuous batching needs: rows prefilled in their own cache join a
running cache, left-aligned on the last column (the decode loop left-pads, so every row's
newest token sits in the last column), with the columns no running row uses any more dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in ``[batch, heads, capacity, head_dim]`` buffers; ``update``
    writes the new columns in place and returns views of the filled ones. Past ``capacity`` the
    buffers double (one copy), so a wrong estimate costs time, never tokens."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads = key_states.shape[:2]
        self.key_buffer = key_states.new_zeros((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_zeros(
            (batch, heads, self.capacity, value_states.shape[-1])
        )
        self.length = 0
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._resize(max(end, 2 * self.capacity))
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._refresh()

    def _refresh(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def _resize(self, capacity: int) -> None:
        keys, values = self.key_buffer, self.value_buffer
        shape = (*keys.shape[:2], capacity)
        self.key_buffer = keys.new_zeros((*shape, keys.shape[-1]))
        self.value_buffer = values.new_zeros((*shape, values.shape[-1]))
        self.key_buffer[:, :, : self.length] = keys[:, :, : self.length]
        self.value_buffer[:, :, : self.length] = values[:, :, : self.length]
        self.capacity = capacity


def new_cache(model: Any, capacity: int) -> DynamicCache:
    """The model's ``DynamicCache`` with every full-attention layer preallocated for
    ``capacity`` tokens (sliding-window layers stay dynamic: they are bounded already)."""
    try:
        cache = DynamicCache(config=model.config)  # sliding-window layers need the config
    except TypeError:  # transformers before 4.56 take no config
        cache = DynamicCache()
    layers = getattr(cache, "layers", None)
    if layers:
        for index, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[index] = PreallocatedLayer(capacity)
    return cache


def mergeable(cache: Any) -> bool:
    """Whether :func:`merge_rows` can add rows to ``cache``: every layer preallocated and
    filled (a forward that never wrote the cache, or a sliding-window layer, cannot be)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        isinstance(layer, PreallocatedLayer) and layer.is_initialized for layer in layers
    )


def merge_rows(
    cache: Any, mask: torch.Tensor, added: Any, added_mask: torch.Tensor, room: int
) -> torch.Tensor:
    """Append the rows of cache ``added`` (attention mask ``added_mask``) to ``cache`` (mask
    ``mask``), in place, both right-aligned on their last column; columns masked out in every
    row are dropped from the left and ``room`` free columns are left for decoding. Returns the
    merged mask. Both caches must be :func:`mergeable`."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    kept = mask.shape[1] - start  # columns of the running rows that stay
    width = max(kept, added_mask.shape[1])
    rows = mask.shape[0] + added_mask.shape[0]
    merged = mask.new_zeros((rows, width))
    merged[: mask.shape[0], width - kept :] = mask[:, start:]
    merged[mask.shape[0] :, width - added_mask.shape[1] :] = added_mask
    for layer, extra in zip(cache.layers, added.layers, strict=True):
        buffers = []
        for old, new in ((layer.keys, extra.keys), (layer.values, extra.values)):
            buffer = old.new_zeros((rows, old.shape[1], width + room, old.shape[-1]))
            buffer[: old.shape[0], :, width - kept : width] = old[:, :, start:]
            buffer[old.shape[0] :, :, width - new.shape[2] : width] = new
            buffers.append(buffer)
        layer.key_buffer, layer.value_buffer = buffers
        layer.capacity, layer.length = width + room, width
        layer._refresh()
    return merged
