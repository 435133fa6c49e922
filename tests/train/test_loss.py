"""The chunked loss equals transformers' own causal-LM loss, in value and in gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune.train import loss as loss_module
from finetune.train.loss import causal_lm_loss, linear_cross_entropy_sum
from finetune.train.sft import final_hidden_states


@pytest.fixture
def labelled_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 32000, (3, 40), generator=generator)
    labels = input_ids.clone()
    labels[0, :15] = -100  # a prompt
    labels[1, 30:] = -100  # padding
    labels[2, :] = -100
    labels[2, 20:25] = input_ids[2, 20:25]
    return input_ids, labels


@pytest.mark.parametrize("chunk_rows", [7, 1024])  # many chunks, and one
@pytest.mark.parametrize("num_items", [None, 57])
def test_loss_and_gradients_equal_the_models_own(tiny_mistral, labelled_batch, monkeypatch, chunk_rows, num_items):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", chunk_rows)
    input_ids, labels = labelled_batch
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=torch.float32)
    model.lm_head.weight.requires_grad_(True)  # a trained head too (e.g. modules_to_save)

    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    reference = model(input_ids=input_ids, labels=labels, **kwargs).loss
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    with final_hidden_states(model) as hidden:
        outputs = model(input_ids=input_ids, logits_to_keep=1)
    assert outputs.logits.shape == (3, 1, 32000)  # the full logits were never built
    ours = causal_lm_loss(hidden[0], model.get_output_embeddings(), labels,
                          torch.tensor(num_items) if num_items else None)
    ours.backward()

    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-6), (ours.item(), reference.item())
    for name, p in model.named_parameters():
        scale = expected[name].abs().max()
        assert (p.grad - expected[name]).abs().max() <= 1e-5 * scale, (name, (p.grad - expected[name]).abs().max(), scale)


def test_without_grad_the_sum_matches_cross_entropy_and_keeps_no_gradient():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(100, 16, generator=generator)
    targets = torch.randint(0, 100, (50,), generator=generator)
    with torch.no_grad():
        total = linear_cross_entropy_sum(rows, weight, targets)
    expected = torch.nn.functional.cross_entropy(rows @ weight.T, targets, reduction="sum")
    assert not total.requires_grad
    assert torch.allclose(total, expected, rtol=1e-6)
