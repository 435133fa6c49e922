"""The window rule itself, and that logits are sensitive to it (so a validator can catch errors)."""

import pytest
import torch

from finetune.native import from_transformers, sliding_window_mask

W = 8


def test_mask_rule_counts_w_keys_including_self():
    pos = torch.arange(30)
    mask = sliding_window_mask(pos, pos, W)
    for i in range(30):
        seen = mask[i].nonzero().flatten().tolist()
        assert seen == list(range(max(0, i - W + 1), i + 1))  # i - W < j <= i


def test_mask_rule_equals_transformers_sdpa_mask():
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    ref = sdpa_mask(batch_size=1, q_length=30, kv_length=30, mask_function=sliding_window_causal_mask_function(W),
                    allow_is_causal_skip=False)
    pos = torch.arange(30)
    assert torch.equal(ref[0, 0], sliding_window_mask(pos, pos, W))


def test_mask_with_offsets_and_empty_slots():
    """A chunk at positions 20..22 against cached slots (some empty = -1): only i-W < j <= i."""
    q = torch.tensor([20, 21, 22])
    k = torch.tensor([-1, 13, 14, 15, 19, 20, 21, 22])
    mask = sliding_window_mask(q, k, W)
    assert mask.tolist() == [
        [False, True, True, True, True, True, False, False],
        [False, False, True, True, True, True, True, False],
        [False, False, False, True, True, True, True, True],
    ]


@pytest.mark.parametrize("arch", ["mistral", "mixtral"])
def test_window_changes_logits_only_past_w(hf, toks, arch):
    native = from_transformers(hf(arch, W, "sdpa"))
    ids = toks(3 * W)
    with torch.no_grad():
        windowed, full = native(ids), native.with_window(None)(ids)
    diff = (windowed - full).abs().amax(dim=(0, 2))
    assert diff[:W].max() <= 1e-5  # before W the window does not bind
    assert (diff[W:] > 1e-2).all()  # at every position from W on it does


@pytest.mark.parametrize("other", [W - 1, W + 1, None])
def test_off_by_one_window_is_detectable(hf, toks, other):
    """Against transformers, only the true W passes; W-1, W+1 (the old rule) and no window fail."""
    hf_model = hf("mistral", W, "eager")
    native = from_transformers(hf_model)
    ids = toks(3 * W)
    with torch.no_grad():
        ref = hf_model(ids).logits
        assert (ref - native(ids)).abs().max() <= 1e-4
        assert (ref - native.with_window(other)(ids)).abs().max() > 1e-2


def test_with_window_shares_weights(hf):
    native = from_transformers(hf("mistral", W, "sdpa"))
    view = native.with_window(W + 1)
    assert view.config.sliding_window == W + 1 and native.config.sliding_window == W
    assert view.layers[0].attention.wq.weight is native.layers[0].attention.wq.weight
