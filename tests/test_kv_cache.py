"""spectrumkd.models.kv_cache against transformers' own DynamicLayer, and merge_rows' layout."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from spectrumkd.models.kv_cache import PreallocatedLayer, merge_rows, mergeable


def test_preallocated_layer_returns_what_a_dynamic_layer_returns_through_growth_and_selects():
    torch.manual_seed(0)
    ours, theirs = PreallocatedLayer(capacity=3), DynamicLayer()
    for width in (2, 1, 4, 1, 1):  # 2 + 1 fills the capacity, 4 more doubles it twice over
        keys, values = torch.randn(3, 2, width, 4), torch.randn(3, 2, width, 4)
        for got, want in zip(ours.update(keys, values), theirs.update(keys, values), strict=True):
            assert torch.equal(got, want)
        assert ours.get_seq_length() == theirs.get_seq_length()
        assert ours.get_mask_sizes(1) == theirs.get_mask_sizes(1)
    keep = torch.tensor([2, 0])
    ours.batch_select_indices(keep)
    theirs.batch_select_indices(keep)
    keys, values = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    for got, want in zip(ours.update(keys, values), theirs.update(keys, values), strict=True):
        assert torch.equal(got, want)


class _Cache:
    def __init__(self, *layers: PreallocatedLayer) -> None:
        self.layers = list(layers)


def _filled(rows: int, width: int, seed: int) -> PreallocatedLayer:
    torch.manual_seed(seed)
    layer = PreallocatedLayer(capacity=width)
    layer.update(torch.randn(rows, 2, width, 4), torch.randn(rows, 2, width, 4))
    return layer


def test_merge_rows_right_aligns_both_batches_and_drops_columns_no_row_uses():
    running, added = _filled(2, 6, seed=1), _filled(1, 3, seed=2)
    old_keys, new_keys = running.keys.clone(), added.keys.clone()
    assert mergeable(_Cache(running)) and not mergeable(_Cache(PreallocatedLayer(4)))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])  # columns 0-1: no row
    added_mask = torch.tensor([[0, 1, 1]])
    merged = merge_rows(_Cache(running), mask, _Cache(added), added_mask, room=5)
    assert merged.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
    assert running.get_seq_length() == 4 and running.capacity == 9
    assert torch.equal(running.keys[:2], old_keys[:, :, 2:])
    assert torch.equal(running.keys[2:, :, 1:], new_keys)
    assert torch.all(running.keys[2:, :, :1] == 0)
    step = torch.randn(3, 2, 1, 4)
    keys, _ = running.update(step, step)  # decoding goes on in the room left
    assert keys.shape[2] == 5 and torch.equal(keys[:, :, -1:], step)
