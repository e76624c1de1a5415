import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab.fastdropout import FastDropout, fast_dropout, fast_dropout_enabled


@pytest.mark.parametrize("p", [0.1, 0.05, 0.3, 0.5, 0.0123])
def test_drops_the_configured_fraction_and_keeps_the_expectation(p):
    from loralab.fastdropout import drop_probability, survivor_scale

    assert abs(drop_probability(p) - p) < 1e-5  # exact to 1e-4 and better (a byte per element gave 0.1016)
    assert survivor_scale(p) == pytest.approx(1 / (1 - p), rel=1e-4)
    torch.manual_seed(0)
    x = torch.ones(2000, 2000)
    y = fast_dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 1e-3  # 4 million draws: a standard error under 2.5e-4
    assert abs(y.mean().item() - 1.0) < 2e-3  # survivors rescaled: expectation kept
    assert torch.equal(fast_dropout(x, p, training=False), x)


def test_a_model_whose_attention_cannot_be_routed_says_so(caplog):
    model = tiny_bert()

    def refuse(name):
        raise ValueError("not supported here")

    model.set_attn_implementation = refuse
    with caplog.at_level("WARNING", logger="loralab"), fast_dropout_enabled(model):
        assert any(isinstance(m, FastDropout) for m in model.modules())
    assert "could not route BertForSequenceClassification's attention" in caplog.text


def test_seeded_and_differentiable():
    torch.manual_seed(3)
    a = fast_dropout(torch.ones(64, 64), 0.3)
    torch.manual_seed(3)
    b = fast_dropout(torch.ones(64, 64), 0.3)
    assert torch.equal(a, b)
    x = torch.randn(32, 32, requires_grad=True)
    torch.manual_seed(1)
    y = fast_dropout(x, 0.5)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)


def test_model_is_restored_and_eval_unchanged():
    model = tiny_bert()
    ids = torch.randint(0, 120, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    attn = model.config._attn_implementation
    with fast_dropout_enabled(model):
        assert any(isinstance(m, FastDropout) for m in model.modules())
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)
        model.train()
        out = model(input_ids=ids, labels=torch.tensor([0, 1]))
        out.loss.backward()
        model.eval()
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) > 0
    assert model.config._attn_implementation == attn


def test_training_attention_is_softmax_attention_with_the_dropout_mask():
    """The eager training path (queries scaled, mask added, survivors rescaled in the
    output) computes dropout(softmax(q k^T / sqrt(d) + mask)) v, gradients included."""
    from loralab.fastdropout import attention, drop_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False  # the second review has two padding tokens
    module = nn.Module().train()
    torch.manual_seed(7)
    out, _ = attention(module, q, k, v, mask, dropout=0.2)
    torch.manual_seed(7)
    drop, factor = drop_mask(torch.Size((2, 3, 5, 5)), 0.2, q.device)
    scores = (q @ k.transpose(2, 3)) / 2 + torch.where(mask, 0.0, float("-inf"))
    expected = (torch.softmax(scores, -1).masked_fill(drop, 0) * factor @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(expected.square().sum(), (q, k, v)))
    assert torch.all(grads[1][1, :, 3:] == 0)  # padded keys get no gradient
