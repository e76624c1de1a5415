"""The attention core of a training step, alone: loralab's against the model's own.

Forward + backward of one self-attention core (scores, mask, softmax, dropout on the
probabilities, the product with the values) at the default model's shape, bf16 autocast
where the CPU has it (else float32) as in training, attention dropout 0.1, a padding mask
as `loralab train`'s batches have. On a CPU this (batch, heads, seq, seq) work, not the
matrix products, is most of a LoRA training step (see `roofline.py`).

Sides: transformers' eager attention with PyTorch's dropout (what the model runs in
training when dropout is on: the peer), loralab's (`loralab.fastdropout.attention`), and,
as a bound, PyTorch's fused `scaled_dot_product_attention`, which runs on the CPU only
without dropout (a recipe with attention dropout off); and loralab's before it stopped
keeping the dropped probabilities for the backward pass (`_DroppedMatmul`). Besides
speed: the MB each side keeps for its backward pass (saved tensors, counted once each).

    python benchmarks/attention.py [--seq 256] [--batch 8] [--repeats 7] [--tiny]

Last line: `ratio: X`, loralab's calls/s over transformers' eager attention's.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import alternate, done, machine, median, table

DROPOUT = 0.1


def saved_mb(fn, precision: str) -> float:
    """MB of the tensors autograd keeps for the backward pass of `fn()` (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        fn()
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per measurement")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.seq, args.repeats, args.calls = 2, 16, 5, 1

    from transformers import AutoConfig
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.bert.modeling_bert import eager_attention_forward

    from loralab.fastdropout import additive_mask, attention, fast_dropout, survivor_scale
    from loralab.inference import bf16_supported
    from loralab.models import resolve_model_path

    precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    shape = (args.batch, heads, args.seq, dim)
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(args.batch, args.seq, heads, dim, dtype=dtype)
    # Reviews of similar length, as length-grouped batches: the shorter ones padded by up to 1/8.
    lengths = torch.linspace(args.seq, args.seq * 7 // 8, args.batch).long()
    keep = torch.arange(args.seq)[None, :] < lengths[:, None]  # (batch, seq)
    bool_mask = keep[:, None, None, :].expand(args.batch, 1, args.seq, args.seq)  # as sdpa_mask makes it
    float_mask = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    module = torch.nn.Module().train()
    module.is_causal = False

    def eager():
        return eager_attention_forward(module, q, k, v, float_mask, dropout=DROPOUT)[0]

    def ours():
        return attention(module, q, k, v, bool_mask, dropout=DROPOUT)[0]

    def before():  # loralab's until the dropped probabilities stopped being kept
        scores = torch.matmul(q * dim ** -0.5, k.transpose(2, 3))
        scores.add_(additive_mask(bool_mask, scores.dtype))
        probs = fast_dropout(torch.softmax(scores, dim=-1), DROPOUT, scale=False)
        return (torch.matmul(probs, v) * survivor_scale(DROPOUT)).transpose(1, 2).contiguous()

    def fused():
        return sdpa_attention_forward(module, q, k, v, bool_mask, dropout=0.0)[0]

    def timer(fn):
        def measure() -> float:
            start = time.perf_counter()
            for _ in range(args.calls):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = fn()
                out.backward(grad)
            return args.calls / (time.perf_counter() - start)
        return measure

    sides = {"transformers eager + torch dropout": eager, "loralab (fast dropout)": ours,
             "loralab, dropped probabilities kept (before)": before, "fused SDPA, no dropout (bound)": fused}
    results = alternate({name: timer(fn) for name, fn in sides.items()}, repeats=args.repeats)
    peer = median(results["transformers eager + torch dropout"])
    print(f"# attention: {machine()}")
    print(f"# model {args.model}: {heads} heads of {dim}; batch {args.batch} x {args.seq} tokens (the shorter "
          f"reviews padded by up to 1/8), {precision}, attention dropout {DROPOUT} (none in the bound), "
          f"forward + backward, {args.calls} calls per measurement, {args.repeats} alternating repeats "
          "after a warm-up\n")
    rows = [[name, median(r), min(r), max(r), median(r) / peer, saved_mb(sides[name], precision)]
            for name, r in results.items()]
    print(table(["side", "calls/s (median)", "min", "max", "x eager", "kept for backward (MB)"], rows))
    done(median(results["loralab (fast dropout)"]) / peer)


if __name__ == "__main__":
    main()
