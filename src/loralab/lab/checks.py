"""The lab's "Test your code" cells as functions a student calls on their own code.

    from loralab.lab import check

    check.num_trainable_parameters(num_trainable_parameters)   # task 1
    check.headtuned(headtuned_model)                            # task 2
    check.extract(extract)                                      # task 3
    check.replace(replace)                                      # task 4
    check.approximate(approximate)                              # task 5
    check.lora(LoRA)                                            # task 8

Each runs the lab's own test and stronger ones (exact counts on the lab's architecture,
Eckart-Young optimality, the B = 0 identity, no d x d product formed, the replace test's
restore), prints what passed, or what is wrong and its likely cause, and returns it as a
`CheckResult` (`passed`, `problems`; true when there are none). They need no hub and no
data: models are built from configs (the lab's distilbert-base-uncased architecture, with
random weights), and run in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

# The lab's figures for distilbert-base-uncased with a 2-way head.
LAB_PARAMETERS = 66_955_010
LAB_HEAD_PARAMETERS = 592_130
LAB_QUERY_VALUE_PARAMETERS = 7_087_104


@dataclass
class CheckResult:
    """A check's verdict as data: what passed and each problem found (what is wrong and its
    likely cause). True when nothing failed, so ``assert check.lora(MyLoRA)`` reads as it says."""

    task: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        verdict = "all checks passed" if not self.problems else f"{len(self.problems)} problem(s)"
        lines = [f"{self.task}: {verdict}"] + [f"  ok: {p}" for p in self.passed]
        return "\n".join(lines + [f"  PROBLEM: {f}" for f in self.problems])


class _Report:
    """Collects the findings of one check, then prints them and returns its `CheckResult`."""

    def __init__(self, task: str):
        self.result = CheckResult(task)

    def ok(self, what: str) -> None:
        self.result.passed.append(what)

    def fail(self, what: str) -> None:
        self.result.problems.append(what)

    @property
    def failed(self) -> list[str]:
        return self.result.problems

    def done(self) -> CheckResult:
        print(self.result)
        return self.result


def _run(report: _Report, what: str, fn: Callable, *args):
    """`fn(*args)`, or None with a problem reported where it raises."""
    try:
        return fn(*args)
    except Exception as err:  # a student's code may raise anything: say what and where
        report.fail(f"{what} raised {type(err).__name__}: {err}")
        return None


def lab_model(num_labels: int = 2) -> nn.Module:
    """The lab's architecture (distilbert-base-uncased's config), with random weights."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(num_labels=num_labels)).eval()


def num_trainable_parameters(fn: Callable[[nn.Module], int]) -> CheckResult:
    """Task 1: the float-valued parameters that require gradients."""
    report = _Report("num_trainable_parameters")
    model = lab_model()
    got = _run(report, "num_trainable_parameters(model)", fn, model)
    if got is not None and not isinstance(got, int):
        report.fail(f"returned a {type(got).__name__} ({got!r}); return the count as an int")
        return report.done()
    if got is not None:
        if got == LAB_PARAMETERS:
            report.ok(f"the lab's model has {LAB_PARAMETERS:,} trainable parameters")
        elif got == len(list(model.parameters())):
            report.fail(f"got {got}, the number of parameter tensors; count their elements (p.numel()), "
                        f"{LAB_PARAMETERS:,} in all")
        else:
            report.fail(f"got {got:,} for the lab's model, expected {LAB_PARAMETERS:,}")
    from ..surgery import freeze_all_but_head

    got = _run(report, "num_trainable_parameters(head-tuned model)", fn, freeze_all_but_head(model))
    if got is not None:
        if got == LAB_HEAD_PARAMETERS:
            report.ok(f"with all but the head frozen: {LAB_HEAD_PARAMETERS:,}")
        elif got == LAB_PARAMETERS:
            report.fail(f"with all but the head frozen it still counts {got:,}: frozen parameters are counted "
                        f"too; count only those with p.requires_grad ({LAB_HEAD_PARAMETERS:,})")
        else:
            report.fail(f"with all but the head frozen: got {got:,}, expected {LAB_HEAD_PARAMETERS:,}")
    return report.done()


def headtuned(model: nn.Module) -> CheckResult:
    """Task 2: a head-tuned model has its encoder frozen and its head trained."""
    from ..surgery import head_modules, inside

    report = _Report("head-tuned model")
    heads = head_modules(model)
    trainable_outside = [n for n, p in model.named_parameters() if p.requires_grad and not inside(n, heads)]
    if trainable_outside:
        report.fail(f"{len(trainable_outside)} parameter(s) outside the head require gradients (e.g. "
                    f"{trainable_outside[0]}): freeze everything but {', '.join(heads)}")
    else:
        report.ok("every parameter outside the head is frozen")
    biases = {n: p for n, p in model.named_parameters() if inside(n, heads) and n.endswith("bias")}
    if biases and all(torch.count_nonzero(p) == 0 for p in biases.values()):
        report.fail("the head's biases are all zeros, as transformers initialises them: this head was never "
                    "trained. Its predictions are those of a random head (in the lab, both approximated "
                    "models then scored 0.526 at every rank); train it (Trainer(...).train()) before using it")
    elif biases:
        report.ok("the head has been trained (its biases moved from their initial zeros)")
    return report.done()


def extract(fn: Callable[[nn.Module], dict]) -> CheckResult:
    """Task 3: the query and value layers of the lab's model, by name."""
    report = _Report("extract")
    model = lab_model()
    layers = _run(report, "extract(model)", fn, model)
    if layers is None:
        return report.done()
    if not isinstance(layers, dict):
        report.fail(f"returned a {type(layers).__name__}; return a dict of name -> layer")
        return report.done()
    modules = dict(model.named_modules())
    wrong = [n for n in layers if n not in modules]
    names_ok = all(n.endswith(("q_lin", "v_lin")) for n in layers) and len(layers) == 12
    count = sum(p.numel() for layer in layers.values() for p in layer.parameters() if p.is_floating_point())
    if wrong:
        report.fail(f"{wrong[0]!r} is not the name of a module of the model (use model.named_modules() names)")
    elif not names_ok:
        report.fail(f"got {len(layers)} layers ({', '.join(list(layers)[:3])}, ...); expected the 12 q_lin and "
                    "v_lin layers of the 6 blocks")
    else:
        report.ok("the 12 query and value layers, by their full names")
    if count == LAB_QUERY_VALUE_PARAMETERS:
        report.ok(f"they hold {count:,} parameters, as the lab says")
    else:
        report.fail(f"they hold {count:,} parameters; the lab's query and value layers hold "
                    f"{LAB_QUERY_VALUE_PARAMETERS:,}")
    return report.done()


def replace(fn: Callable[[nn.Module, dict], nn.Module]) -> CheckResult:
    """Task 4: replacing layers changes the model it is given, and the originals restore it."""
    from ..surgery import clone_linear
    from ..surgery import target_layers as find

    report = _Report("replace")
    model = lab_model()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids).logits

    before = logits(model)
    originals = find(model)
    torch.manual_seed(1)
    clones = {name: clone_linear(layer) for name, layer in originals.items()}
    returned = _run(report, "replace(model, clones)", fn, model, clones)
    if returned is None and report.failed:
        return report.done()
    in_place = all(model.get_submodule(n) is layer for n, layer in clones.items())
    if in_place:
        report.ok("replace changes the model it is given, in place")
    elif returned is not None and returned is not model and all(
            returned.get_submodule(n) is not originals[n] for n in clones):
        report.fail("replace returned a changed copy and left the model it was given as it was. Code that calls "
                    "replace(model, ...) without using its result then evaluates the unchanged model: the "
                    "lab's feedback 'the performance is equal with the randomly initialized layers'. Change "
                    "the model in place (setattr on the parent module) and return it")
        return report.done()
    else:
        report.fail("after replace(model, clones) the model does not hold the clones")
        return report.done()
    if returned is not model:
        report.fail("replace should return the model it changed (so both styles of calling it work)")
    if torch.equal(logits(model), before):
        report.fail("the logits did not change with random layers in place")
    else:
        report.ok("random clones change the model's logits")
    _run(report, "replace(model, originals)", fn, model, originals)
    if torch.equal(logits(model), before):
        report.ok("putting the original layers back restores the logits exactly")
    else:
        report.fail("putting the original layers back does not restore the logits")
    return report.done()


def approximate(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """Task 5: the best rank-r approximation (truncated SVD)."""
    report = _Report("approximate")
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(768, 8, generator=gen) @ torch.rand(8, 384, generator=gen)
    approx = _run(report, "approximate(original, 8)", fn, original, 8)
    if approx is None:
        return report.done()
    if tuple(approx.shape) != tuple(original.shape):
        report.fail(f"the approximation has shape {tuple(approx.shape)}, the matrix {tuple(original.shape)}")
        return report.done()
    dist = float(torch.dist(original, approx))
    if dist < 1e-2 * float(original.norm()):
        report.ok(f"the lab's test: a rank-8 matrix is kept at rank 8 (distance {dist:.4f})")
    else:
        report.fail(f"the lab's test: a rank-8 matrix at rank 8 should come back almost unchanged, "
                    f"distance {dist:.4f}")
    matrix = torch.randn(60, 40, generator=gen, dtype=torch.float64)
    s = torch.linalg.svdvals(matrix)
    for rank in (1, 5, 17):
        got = _run(report, f"approximate(matrix, {rank})", fn, matrix, rank)
        if got is None:
            continue
        got_rank = int(torch.linalg.matrix_rank(got.double()))
        best = float(s[rank:].square().sum().sqrt())
        error = float(torch.dist(matrix, got.double()))
        if got_rank != rank:
            report.fail(f"approximate(matrix, {rank}) has rank {got_rank}, not {rank}: keep exactly the {rank} "
                        "largest singular values (U[:, :r] * S[:r] @ Vh[:r])")
        elif not math.isclose(error, best, rel_tol=1e-3):
            report.fail(f"at rank {rank} the error is {error:.4f}; the best rank-{rank} matrix (Eckart-Young) is "
                        f"{best:.4f} away: keep the largest singular values, not the first or smallest")
        else:
            report.ok(f"rank {rank}: exactly rank {rank}, and the best one (error {error:.4f}, Eckart-Young)")
    return report.done()


def lora(cls: type) -> CheckResult:
    """Task 8: the LoRA layer: frozen base, B = 0 identity, alpha / r scaling, standard-normal
    A, and no (in x out) product formed in the forward pass."""
    report = _Report("LoRA")
    torch.manual_seed(0)
    base = nn.Linear(48, 32)
    layer = _run(report, "LoRA(linear, rank=4, alpha=8)", cls, base, 4, 8)
    if layer is None:
        return report.done()
    trainable = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        report.fail("the pre-trained layer's weight and bias must be frozen (requires_grad = False)")
    else:
        report.ok("the pre-trained layer is frozen")
    pair = _factors(trainable, 48, 32, 4)
    if pair is None:
        report.fail(f"expected two trainable matrices of rank 4 (48 x 4 and 4 x 32, either way round), found "
                    f"{ {n: tuple(p.shape) for n, p in trainable.items()} }")
        return report.done()
    zero = [p for p in pair if torch.count_nonzero(p) == 0]
    b = zero[0] if len(zero) == 1 else pair[1]
    a = pair[0] if b is pair[1] else pair[1]
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        out = _run(report, "forward", layer, x)
    if out is not None and len(zero) == 1 and torch.allclose(out, base(x), atol=1e-6):
        report.ok("B starts at zero: the layer starts equal to the pre-trained one")
    elif out is not None:
        report.fail("B must start at zero, so the adapted layer starts equal to the pre-trained one")
    std = float(a.detach().std())
    if 0.8 < std < 1.2:
        report.ok(f"A starts standard normal (std {std:.2f})")
    else:
        why = ": it is scaled by about 0.01, so the update starts weaker and learns slower" if std < 0.05 else ""
        report.fail(f"A starts with std {std:.2f}; the specification (and the lab) draws A from a standard normal "
                    f"(std 1){why}")
    with torch.no_grad():
        b.normal_()
        delta = _delta(pair, 48, 32)  # (in, out)
        expected = base(x) + (8 / 4) * (x @ delta)
        shapes = _shapes_during(layer, x)
        out = layer(x)
    if torch.allclose(out, expected, atol=1e-4):
        report.ok("forward computes base(x) + (alpha / r) x A B")
    else:
        ratio = float(((out - base(x)) / (x @ delta)).median())
        report.fail(f"forward does not compute base(x) + (alpha / r) x A B (the update is scaled by about {ratio:.3g}, "
                    "not alpha / r = 2)")
    full = [s for s in shapes if s[-2:] in ((48, 32), (32, 48))]
    if full:
        report.fail("the forward pass forms the full 48 x 32 product A B (in x out) on every call: that costs "
                    "in * out per step and memory for a d x d matrix; compute (x A) B instead")
    else:
        report.ok("the forward pass never forms the (in x out) product A B")
    return report.done()


def _factors(trainable: dict, d_in: int, d_out: int, r: int):
    """The two low-rank matrices: (the one on the input side, the one on the output side)."""
    side_in = [p for p in trainable.values() if p.dim() == 2 and set(p.shape) == {d_in, r}]
    side_out = [p for p in trainable.values() if p.dim() == 2 and set(p.shape) == {d_out, r}]
    return (side_in[0], side_out[0]) if len(side_in) == 1 and len(side_out) == 1 else None


def _delta(pair, d_in: int, d_out: int) -> torch.Tensor:
    """The update as an (in, out) matrix, whichever way round the two are stored."""
    left, right = pair
    left = left if left.shape[0] == d_in else left.T     # (in, r)
    right = right if right.shape[1] == d_out else right.T  # (r, out)
    return left @ right


def _shapes_during(layer: nn.Module, x: torch.Tensor) -> list[tuple]:
    """The shapes of every tensor a forward pass makes (a torch function mode sees them all)."""
    from torch.overrides import TorchFunctionMode

    shapes: list[tuple] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                shapes.append(tuple(out.shape))
            return out

    with Spy():
        layer(x)
    return shapes


def all_checks() -> dict[str, Callable]:
    return {"num_trainable_parameters": num_trainable_parameters, "headtuned": headtuned, "extract": extract,
            "replace": replace, "approximate": approximate, "lora": lora}

