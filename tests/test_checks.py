"""`loralab.lab.check`: each check passes loralab's own code and catches the mistakes the
lab's teacher had to catch by hand, saying what is wrong."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_distilbert
from loralab.lab import check


def trained_head(model):
    from loralab.surgery import freeze_all_but_head

    freeze_all_but_head(model).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, labels = torch.randint(0, 120, (8, 10)), torch.randint(0, 2, (8,))
    for _ in range(3):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_every_check_passes_loralabs_own_code(capsys):
    from loralab.lora import LoRA
    from loralab.lowrank import approximate
    from loralab.models import num_trainable_parameters
    from loralab.surgery import replace
    from loralab.surgery import target_layers as extract

    assert check.num_trainable_parameters(num_trainable_parameters)
    assert check.extract(extract)
    assert check.replace(replace)
    assert check.approximate(approximate)
    assert check.lora(LoRA)
    assert check.headtuned(trained_head(tiny_distilbert()))
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and out.count("all checks passed") == 6
    assert "the lab's model has 66,955,010 trainable parameters" in out
    assert "the forward pass never forms the (in x out) product A B" in out


def problem(result, text: str) -> bool:
    """`text` is in one of the problems a failed check returned (verdicts are data)."""
    return not result and any(text in p for p in result.problems)


def test_a_count_of_frozen_parameters_too(capsys):
    result = check.num_trainable_parameters(lambda model: sum(p.numel() for p in model.parameters()))
    assert problem(result, "frozen parameters are counted too; count only those with p.requires_grad (592,130)")
    assert "PROBLEM: " + result.problems[0] in capsys.readouterr().out  # and printed for the student


def test_a_head_never_trained(capsys):
    from loralab.surgery import freeze_all_but_head

    assert problem(check.headtuned(freeze_all_but_head(tiny_distilbert())), "this head was never trained")


def test_a_replace_whose_result_goes_unused(capsys):
    def replace_on_a_copy(model, layers):  # the worked notebook's mistake: the caller's model stays as it was
        from loralab.surgery import replace

        return replace(copy.deepcopy(model), layers)

    assert problem(check.replace(replace_on_a_copy),
                   "replace returned a changed copy and left the model it was given as it was")


def test_an_approximation_of_the_wrong_rank(capsys):
    from loralab.lowrank import approximate

    assert problem(check.approximate(lambda m, r: approximate(m, r + 1)), "approximate(matrix, 5) has rank 6, not 5")


class NotebookLoRA(nn.Module):
    """The worked notebook's LoRA: A scaled by 0.01, and A B formed on every forward pass."""

    def __init__(self, pretrained: nn.Linear, rank: int = 12, alpha: float = 24):
        super().__init__()
        self.pretrained = pretrained
        self.rank, self.alpha = rank, alpha
        in_features, out_features = pretrained.weight.shape
        self.pretrained.weight.requires_grad = False
        self.pretrained.bias.requires_grad = False
        self.A = nn.Parameter(torch.randn(in_features, rank) * 0.01)
        self.B = nn.Parameter(torch.zeros(rank, out_features))

    def forward(self, x):
        delta = self.A @ self.B
        return self.pretrained(x) + self.alpha / self.rank * (x @ delta.T)


def test_a_lora_that_forms_a_b_and_scales_a(capsys):
    result = check.lora(NotebookLoRA)
    assert problem(result, "the forward pass forms the full 48 x 32 product A B")
    assert problem(result, "A starts with std 0.01") and problem(result, "scaled by about 0.01")
    assert any("forward computes base(x) + (alpha / r) x A B" in p for p in result.passed)  # the formula is right


@pytest.mark.parametrize("broken", [lambda model: 1 / 0, lambda model: "many"])
def test_a_crash_or_a_wrong_type_is_a_problem_not_a_traceback(broken, capsys):
    for result in (check.num_trainable_parameters(broken), check.extract(broken)):
        assert not result and result.problems, result
