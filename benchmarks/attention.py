"""The attention core of a training step, alone: loralab's against the model's own.

Forward + backward of one self-attention core (scores, mask, softmax, dropout on the
probabilities, the product with the values) at the default model's shape, bf16 autocast
as in training, attention dropout 0.1, a padding mask as `loralab train`'s batches have.
On a CPU this (batch, heads, seq, seq) work, not the matrix products, is most of a LoRA
training step (see `roofline.py`).

Sides: transformers' eager attention with PyTorch's dropout (what the model runs in
training when dropout is on: the peer), loralab's (`loralab.fastdropout.attention`), and,
as a bound, PyTorch's fused `scaled_dot_product_attention`, which runs on the CPU only
without dropout (a recipe with attention dropout off).

    python benchmarks/attention.py [--seq 256] [--batch 8] [--repeats 7] [--tiny]

Last line: `ratio: X`, loralab's calls/s over transformers' eager attention's.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import alternate, done, machine, median, table

DROPOUT = 0.1


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

    from loralab.fastdropout import attention
    from loralab.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    shape = (args.batch, heads, args.seq, dim)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(args.batch, args.seq, heads, dim, dtype=torch.bfloat16)
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

    def fused():
        return sdpa_attention_forward(module, q, k, v, bool_mask, dropout=0.0)[0]

    def timer(fn):
        def measure() -> float:
            start = time.perf_counter()
            for _ in range(args.calls):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = fn()
                out.backward(grad)
            return args.calls / (time.perf_counter() - start)
        return measure

    sides = {"transformers eager + torch dropout": eager, "loralab (fast dropout)": ours,
             "fused SDPA, no dropout (bound)": fused}
    results = alternate({name: timer(fn) for name, fn in sides.items()}, repeats=args.repeats)
    peer = median(results["transformers eager + torch dropout"])
    print(f"# attention: {machine()}")
    print(f"# model {args.model}: {heads} heads of {dim}; batch {args.batch} x {args.seq} tokens (the shorter "
          f"reviews padded by up to 1/8), bf16 autocast, attention dropout {DROPOUT} (none in the bound), "
          f"forward + backward, {args.calls} calls per measurement, {args.repeats} alternating repeats "
          "after a warm-up\n")
    rows = [[name, median(r), min(r), max(r), median(r) / peer] for name, r in results.items()]
    print(table(["side", "calls/s (median)", "min", "max", "x eager"], rows))
    done(median(results["loralab (fast dropout)"]) / peer)


if __name__ == "__main__":
    main()
