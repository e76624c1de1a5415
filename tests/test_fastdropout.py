import torch
from conftest import tiny_bert
from torch import nn

from loralab.fastdropout import FastDropout, fast_dropout, fast_dropout_enabled


def test_drop_rate_and_expectation():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 26 / 256) < 2e-3  # p rounded to 1/256
    assert abs(y.mean().item() - 1.0) < 2e-3  # survivors rescaled: expectation kept
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)


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
