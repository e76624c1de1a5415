import copy

import pytest
import torch

import loralab.lowrank as lowrank
from conftest import tiny_bert
from loralab import freeze_all_but_head, replace
from loralab.lab import extract
from loralab.lowrank import (
    SVD,
    LowRankStudy,
    approximate,
    halving_ranks,
    lowest_rank_above,
    make_approximated_model_1,
    make_approximated_model_2,
    subspace_similarity,
)

IDS = torch.randint(0, 120, (4, 10), generator=torch.Generator().manual_seed(1))


def test_low_rank_matrix_is_reproduced():
    torch.manual_seed(0)
    original = torch.rand(768, 8) @ torch.rand(8, 384)
    approximation = approximate(original, 8)
    assert (torch.linalg.norm(original - approximation) / torch.linalg.norm(original)) < 1e-5
    assert approximation.dtype == original.dtype


def test_eckart_young():
    torch.manual_seed(0)
    matrix = torch.randn(60, 40, dtype=torch.float64)
    s = torch.linalg.svdvals(matrix)
    for r in (1, 5, 20, 40):
        error = torch.linalg.norm(matrix - approximate(matrix, r))
        torch.testing.assert_close(error, s[r:].square().sum().sqrt())
        for _ in range(5):  # no other rank-r matrix does better
            other = torch.randn(60, r, dtype=torch.float64) @ torch.randn(r, 40, dtype=torch.float64)
            assert torch.linalg.norm(matrix - other) >= error
        # nor the optimum with its factors nudged (still rank r)
        svd = SVD.of(matrix)
        for _ in range(5):
            left = svd.U[:, :r] * svd.S[:r] + 1e-3 * torch.randn(60, r, dtype=torch.float64)
            right = svd.Vh[:r] + 1e-3 * torch.randn(r, 40, dtype=torch.float64)
            assert torch.linalg.norm(matrix - left @ right) >= error


def test_halving_ranks():
    assert halving_ranks(384) == [384, 192, 96, 48, 24, 12, 6, 3, 1]
    assert halving_ranks(768)[-3:] == [6, 3, 1]


@pytest.fixture
def trio():
    """Pre-trained, fine-tuned (everything nudged) and head-tuned (head changed) tiny models."""
    pretrained = tiny_bert(seed=0)
    finetuned = copy.deepcopy(pretrained)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    headtuned = freeze_all_but_head(copy.deepcopy(pretrained))
    with torch.no_grad():
        headtuned.classifier.weight.normal_()
    return pretrained, finetuned, headtuned


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_full_rank_models_equal_headtuned_with_finetuned_layers(trio):
    pretrained, finetuned, headtuned = trio
    reference = replace(copy.deepcopy(headtuned), copy.deepcopy(extract(finetuned)))
    for model in (make_approximated_model_1(32, headtuned, finetuned),
                  make_approximated_model_2(32, headtuned, finetuned, pretrained)):
        for name, layer in extract(model).items():
            torch.testing.assert_close(layer.weight, extract(finetuned)[name].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)


def test_model_2_at_rank_0_or_zero_update_is_headtuned(trio):
    pretrained, finetuned, headtuned = trio
    at_zero = make_approximated_model_2(0, headtuned, finetuned, pretrained)
    for name, layer in extract(at_zero).items():
        assert torch.equal(layer.weight, extract(pretrained)[name].weight)
    no_update = make_approximated_model_2(4, headtuned, copy.deepcopy(pretrained), pretrained)
    torch.testing.assert_close(logits(no_update), logits(headtuned), atol=0, rtol=0)


def test_inputs_are_untouched(trio):
    pretrained, finetuned, headtuned = trio
    before = [copy.deepcopy(m.state_dict()) for m in trio]
    make_approximated_model_1(2, headtuned, finetuned)
    make_approximated_model_2(2, headtuned, finetuned, pretrained)
    for model, state in zip(trio, before):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_sweep_computes_one_svd_per_matrix(trio, monkeypatch):
    pretrained, finetuned, headtuned = trio
    calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real_svd(*a, **k))
    study = LowRankStudy(headtuned, finetuned, pretrained)
    ranks = halving_ranks(study.full_rank)
    rows1 = study.sweep(1, ranks, lambda m: float(logits(m)[0, 0]), progress=False)
    rows2 = study.sweep(2, ranks, lambda m: float(logits(m)[0, 0]), progress=False)
    assert len(ranks) == 6 and len(rows1) == len(rows2) == 6
    assert len(calls) == 2 * 4  # W and dW of 4 layers (query/value x 2 blocks), not per rank
    # the sweep's models equal the one-off constructions
    one_off = make_approximated_model_2(ranks[2], headtuned, finetuned, pretrained)
    torch.testing.assert_close(rows2[2].eval_accuracy, float(logits(one_off)[0, 0]))


def test_spectrum_fields(trio):
    pretrained, finetuned, headtuned = trio
    spectrum = LowRankStudy(headtuned, finetuned, pretrained).spectrum()
    layer = next(iter(spectrum.values()))
    assert len(spectrum) == 4 and len(layer.singular_values) == 32
    assert layer.energy[-1] == pytest.approx(1.0)
    assert 1 <= layer.rank_50 <= layer.rank_90 <= layer.rank_99 <= 32
    # the energy is the running share of the squared singular values
    squares = torch.tensor(layer.singular_values, dtype=torch.float64).square()
    torch.testing.assert_close(torch.tensor(layer.energy, dtype=torch.float64), squares.cumsum(0) / squares.sum(),
                               atol=1e-6, rtol=0)
    assert layer.frobenius_norm == pytest.approx(float(squares.sum().sqrt()), rel=1e-5)


def test_rank_for_energy_on_known_spectrum():
    svd = SVD.of(torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0])))  # energies 9, 4, 1 of 14
    energy = svd.energy()
    assert lowrank.rank_for_energy(energy, 0.5) == 1
    assert lowrank.rank_for_energy(energy, 0.9) == 2  # 13/14 = 0.93
    assert lowrank.rank_for_energy(energy, 0.99) == 3


def test_subspace_similarity_bounds():
    torch.manual_seed(0)
    a = torch.randn(64, 4) @ torch.randn(4, 32)
    assert subspace_similarity(a, a * 3, 4) == pytest.approx(1.0)
    assert subspace_similarity(a, torch.randn(64, 32), 4) < 0.5


def test_lowest_rank_above():
    rows = [lowrank.SweepPoint(8, {"accuracy": 0.9}), lowrank.SweepPoint(4, 0.85),  # an accuracy alone, as 0.1 took
            lowrank.SweepPoint(2, {"accuracy": 0.7})]
    assert lowest_rank_above(rows, 0.8) == 4
    assert lowest_rank_above(rows, 0.95) is None
