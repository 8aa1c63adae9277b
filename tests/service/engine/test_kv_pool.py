"""The KV slot pool: compaction on release, in-place writes through PoolCache, the prefix mask."""

import pytest
import torch

from bebop.service.engine.kv_pool import SlotPool, prefix_mask


def pool(slots=4, max_len=8):
    return SlotPool(layers=2, slots=slots, kv_heads=1, max_len=max_len, head_dim=2, dtype=torch.float32)


def test_slots_are_handed_out_in_order_and_refused_when_full():
    p = pool(slots=2)
    assert [p.allocate(), p.allocate(), p.allocate()] == [0, 1, None]


def test_release_moves_the_last_slot_into_the_hole():
    p = pool()
    for _ in range(3):
        p.allocate()
    p.k[:, 2] = 7.0
    p.v[:, 2] = 9.0
    assert p.release(0) == 2  # slot 2 now lives at 0
    assert p.active == 2
    assert bool((p.k[:, 0] == 7.0).all()) and bool((p.v[:, 0] == 9.0).all())
    assert p.release(1) is None  # the last one: nothing moves
    with pytest.raises(ValueError, match="not in use"):
        p.release(1)


def test_views_write_in_place_and_read_the_span():
    p = pool()
    p.allocate()
    p.allocate()
    write = torch.tensor([[2, 3], [0, 1]])  # row 0 writes entries 2, 3; row 1 entries 0, 1
    caches = p.views(slice(0, 2), write, span=4)
    k_new = torch.arange(8.0).view(2, 1, 2, 2)  # [B, K, T, D]
    k, _ = caches[1].append(k_new, -k_new)
    assert k.shape == (2, 1, 4, 2)
    assert torch.equal(p.k[1, 0, 0, 2:4], k_new[0, 0])
    assert torch.equal(p.v[1, 1, 0, 0:2], -k_new[1, 0])
    assert bool((p.k[0] == 0).all())  # layer 0 untouched
    with pytest.raises(RuntimeError, match="overflow"):
        p.views(slice(0, 2), write, span=9)


def test_views_keep_one_cut_and_see_what_compaction_moves():
    p = pool()
    for _ in range(3):
        p.allocate()
    write = torch.zeros(2, 1, dtype=torch.int64)
    first = p.views(slice(0, 2), write, span=4)
    again = p.views(slice(0, 2), write + 1, span=4)  # the same rows and span: the same cut
    assert again[0].k is first[0].k and torch.equal(again[0].write_index, write + 1)
    p.k[:, 2] = 5.0
    assert p.release(0) == 2  # slot 2 moves into 0, in place: the kept cut sees it
    assert bool((first[1].k[0] == 5.0).all())
    longer = p.views(slice(0, 2), write, span=6)  # another span: a new cut
    assert longer[0].k.shape == (2, 1, 6, 2) and longer[0].k is not first[0].k


def test_prefix_mask_sees_the_past_and_the_new_tokens_up_to_itself():
    mask = prefix_mask(torch.tensor([2, 0]), T=2, span=4)  # [B, 1, T, span], additive
    assert mask.shape == (2, 1, 2, 4) and mask.dtype == torch.float32
    seen = mask == 0
    assert seen[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert seen[1, 0].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert bool(mask[~seen].eq(float("-inf")).all())
    assert prefix_mask(torch.tensor([0]), T=1, span=2, dtype=torch.bfloat16).dtype == torch.bfloat16
