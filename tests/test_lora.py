"""The LoRA layer, tested on numbers."""

import math

import pytest
import torch
from torch import nn

from loralab import LoRA


def int_layer():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        layer.bias.copy_(torch.tensor([1.0, -1.0]))
    return layer


def test_b_zero_equals_base():
    base = nn.Linear(16, 8)
    lora = LoRA(base, rank=4, alpha=8)
    x = torch.randn(5, 7, 16)
    assert torch.equal(lora(x), base(x))
    assert torch.count_nonzero(lora.B) == 0


def test_forward_is_base_plus_scaled_low_rank():
    base = nn.Linear(16, 8)
    lora = LoRA(base, rank=4, alpha=12)
    nn.init.normal_(lora.B)
    x = torch.randn(5, 16)
    expected = base(x) + 3.0 * x @ lora.A @ lora.B
    torch.testing.assert_close(lora(x), expected)


def test_bias_of_the_update_is_scaled_merged_and_unmerged():
    base = int_layer()
    lora = LoRA(base, rank=2, alpha=4, bias=True)  # scale 2
    x = torch.tensor([[1.0, 0.0, -1.0]])
    assert torch.equal(lora(x), base(x))  # b starts at zero too
    with torch.no_grad():
        lora.B.fill_(1.0)
        lora.b.copy_(torch.tensor([0.5, -2.0]))
    expected = base(x) + 2.0 * (x @ lora.A @ lora.B + lora.b)
    torch.testing.assert_close(lora(x), expected)
    lora.merge()
    assert torch.equal(base.bias, torch.tensor([2.0, -5.0]))
    torch.testing.assert_close(lora(x), expected)
    lora.unmerge()
    assert torch.equal(base.bias, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="bias to merge into"):
        LoRA(nn.Linear(3, 2, bias=False), rank=1, bias=True)


def test_forward_never_forms_the_full_product(monkeypatch):
    lora = LoRA(nn.Linear(64, 48), rank=2)
    shapes = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        out = original(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    lora(torch.randn(3, 64))
    assert (64, 48) not in shapes and shapes == [(3, 2), (3, 48)]


def test_merged_weight_is_exact_for_small_integers():
    base = int_layer()
    lora = LoRA(base, rank=2, alpha=4)  # scale 2
    with torch.no_grad():
        lora.A.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # (in=3, r=2)
        lora.B.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))             # (r=2, out=2)
    x = torch.tensor([[1.0, -2.0, 3.0]])
    unmerged = lora(x)
    # W + s (A B)^T, with A B = [[1, 2], [3, -1], [4, 1]]
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]) + 2 * torch.tensor([[1.0, 3.0, 4.0], [2.0, -1.0, 1.0]])
    assert torch.equal(lora.delta_weight(), expected - int_layer().weight)
    lora.merge()
    assert lora.merged and torch.equal(base.weight, expected)
    assert torch.equal(lora(x), unmerged)
    lora.merge()  # twice changes nothing
    assert torch.equal(base.weight, expected)
    plain = nn.Linear(3, 2)
    plain.load_state_dict(base.state_dict(), strict=True)
    assert torch.equal(plain(x), unmerged)
    lora.unmerge()
    assert not lora.merged and torch.equal(base.weight, int_layer().weight)
    lora.unmerge()
    assert torch.equal(base.weight, int_layer().weight)


def test_train_and_eval_never_merge():
    lora = LoRA(int_layer(), rank=1)
    nn.init.normal_(lora.B)
    before = lora.base.weight.clone()
    lora.eval()
    lora.train()
    lora.train(False)
    assert not lora.merged and torch.equal(lora.base.weight, before)


def test_base_is_frozen_and_bias_kept():
    base = int_layer()
    lora = LoRA(base, rank=2)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert lora.A.requires_grad and lora.B.requires_grad
    assert lora.base is base and torch.equal(base.bias, torch.tensor([1.0, -1.0]))


def test_shapes_and_scaling():
    lora = LoRA(nn.Linear(10, 6), rank=3, alpha=9)
    assert lora.A.shape == (10, 3) and lora.B.shape == (3, 6)
    assert lora.scaling == 3.0
    assert LoRA(nn.Linear(10, 6), rank=4, alpha=8, rslora=True).scaling == 4.0


@pytest.mark.parametrize("init,std", [("normal", 1.0), ("gaussian", 1 / math.sqrt(16)),
                                      ("kaiming", 1 / math.sqrt(3 * 512))])
def test_inits(init, std):
    torch.manual_seed(0)
    lora = LoRA(nn.Linear(512, 256), rank=16, init=init)
    assert abs(lora.A.std().item() - std) / std < 0.05
    if init == "kaiming":
        assert lora.A.abs().max() <= 1 / math.sqrt(512)
    assert torch.count_nonzero(lora.B) == 0


def test_bad_arguments():
    with pytest.raises(TypeError):
        LoRA(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError):
        LoRA(nn.Linear(2, 2), rank=0)
    with pytest.raises(ValueError):
        LoRA(nn.Linear(2, 2), init="xavier")


def test_merge_refuses_non_finite_weights():
    lora = LoRA(nn.Linear(4, 4), rank=2)
    with torch.no_grad():
        lora.B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        lora.merge()
    assert not lora.merged


def test_bfloat16_base_with_float32_adapter():
    base = nn.Linear(8, 8).to(torch.bfloat16)
    lora = LoRA(base, rank=2)
    nn.init.normal_(lora.B)
    assert lora.A.dtype == torch.float32
    y = lora(torch.randn(2, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lora.A.grad is not None and base.weight.grad is None


def test_a_rate_that_does_not_suit_the_init_is_warned_about(tmp_path, tiny_model_dir, synthetic_data, caplog):
    from loralab import train
    from loralab.lora import init_scale, rate_warning
    from loralab.training import TrainSettings

    assert init_scale("normal", 6, 384) == pytest.approx(math.sqrt(3 * 384))  # 34x PEFT's std
    assert init_scale("kaiming", 6, 384) == 1 and init_scale("gaussian", 4, 3) == pytest.approx(1.5)
    assert rate_warning("normal", 6, 384, 5e-5) is None  # the lab's setting
    assert rate_warning("kaiming", 6, 384, 3e-3) is None  # the tuned profile's largest
    assert "like kaiming at 0.1" in rate_warning("normal", 6, 384, 3e-3)
    settings = TrainSettings(epochs=0.1, max_length=16, quiet=True, learning_rate=3e-3)
    with caplog.at_level("WARNING", logger="loralab"):
        train("lora", tmp_path / "normal", str(tiny_model_dir), settings=settings, rank=2)
    assert "LoRA with init 'normal' at learning rate 0.003" in caplog.text and "--init kaiming" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="loralab"):
        train("lora", tmp_path / "kaiming", str(tiny_model_dir), settings=settings, rank=2, init="kaiming")
    assert "LoRA with init" not in caplog.text
