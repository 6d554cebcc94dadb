#!/usr/bin/env python3
"""The peer of `tessera bench-kernels`' attention cases: PyTorch's scaled_dot_product_attention
(FlashAttention-2 or cuDNN on a GPU, whichever torch picks) at the same shapes, on the same
device. Prefill: one causal sequence of N tokens, reported as TFLOP/s with bench-kernels' count
(4 x query-key pairs x query heads x head_dim). Decode: a batch of one-token queries over
contiguous K/V of `context` tokens, reported as GB/s of K and V read. With --compare, reads a
`tessera bench-kernels` log of the same run and prints tessera's figures as ratios of these.

    python3 scripts/peer_attention_torch.py --device cuda --dtype bfloat16 \
        --prefill-tokens 1024,4096 --batch-sizes 32,64 --contexts 4096 --compare bench_kernels.log

The peer reads contiguous K/V, not a paged cache: an upper bound for what paging costs.
Needs torch (pip); exits 2 with a message when it is missing, so that a machine without it skips
the comparison instead of failing the run. A benchmark: reports only.
"""
import argparse
import sys
import time

from peer_util import table_rows, torch_on


def int_list(text, name, parser):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        parser.error(f"{name} '{text}' is not a comma-separated list of integers")
    if not values or min(values) <= 0:
        parser.error(f"{name} must list positive integers")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--prefill-tokens", default="4096")
    p.add_argument("--batch-sizes", default="32,64", help="decode rows")
    p.add_argument("--contexts", default="4096", help="decode contexts")
    p.add_argument("--min-seconds", type=float, default=0.2, help="timed per case, at least")
    p.add_argument("--compare", help="a `tessera bench-kernels` log of the same shapes")
    args = p.parse_args(argv)
    args.prefill_tokens = int_list(args.prefill_tokens, "--prefill-tokens", p)
    args.batch_sizes = int_list(args.batch_sizes, "--batch-sizes", p)
    args.contexts = int_list(args.contexts, "--contexts", p)
    if min(args.q_heads, args.kv_heads, args.head_dim) <= 0 or args.q_heads % args.kv_heads:
        p.error("--q-heads, --kv-heads and --head-dim must be positive, and the KV heads must "
                "divide the query heads")
    return args


def tessera_figures(path):
    """{(op, shape): (GB/s, TFLOP/s)} from a bench-kernels log's table."""
    row = (r"^(decode_attention|prefill_attention)\s+(.+?)\s{2,}([\d.]+)\s+([\d.]+)"
           r"\s+([\d.]+)\s")
    return table_rows(
        path, row,
        lambda m: ((m.group(1), m.group(2).strip()), (float(m.group(4)), float(m.group(5)))))


def main(argv):
    args = parse_args(argv)
    found = torch_on(args.device, "peer_attention_torch", "pip install torch")
    if found is None:
        return 2
    torch, device = found
    import torch.nn.functional as F
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"peer: torch {torch.__version__} scaled_dot_product_attention on {name}, {args.dtype}, "
          f"heads {args.q_heads}/{args.kv_heads} x {args.head_dim}")
    group = args.q_heads // args.kv_heads
    elem = torch.tensor([], dtype=dtype).element_size()

    def attend(q, k, v, causal):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        except TypeError:  # torch before 2.5: no enable_gqa; expand the KV heads
            return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1),
                                                  v.repeat_interleave(group, 1), is_causal=causal)

    def seconds_per_call(fn):
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            if cuda:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_seconds:
                return elapsed / calls

    mine = tessera_figures(args.compare) if args.compare else {}
    print(f"{'op':<18} {'shape':<32} {'us/call':>10} {'GB/s':>9} {'TFLOP/s':>9}  tessera/peer")
    gen = torch.Generator(device=device).manual_seed(0)

    def report(op, shape, seconds, gbps, tflops, figure_index):
        ratio = ""
        if (op, shape) in mine:
            peer = (gbps, tflops)[figure_index]
            ratio = f"{mine[(op, shape)][figure_index] / peer:.2f}" if peer > 0 else ""
        elif mine:
            ratio = "(not in the log)"
        print(f"{op:<18} {shape:<32} {seconds * 1e6:>10.1f} {gbps:>9.1f} {tflops:>9.2f}  {ratio}")

    with torch.inference_mode():
        for n in args.prefill_tokens:
            q = torch.randn(1, args.q_heads, n, args.head_dim, device=device, dtype=dtype,
                            generator=gen)
            k = torch.randn(1, args.kv_heads, n, args.head_dim, device=device, dtype=dtype,
                            generator=gen)
            v = torch.randn_like(k)
            seconds = seconds_per_call(lambda: attend(q, k, v, True))
            flops = 4.0 * n * (n + 1) / 2 * args.q_heads * args.head_dim
            bytes_moved = (2 * q.numel() + k.numel() + v.numel()) * elem
            report("prefill_attention", f"tokens={n} causal", seconds, bytes_moved / seconds / 1e9,
                   flops / seconds / 1e12, 1)
            del q, k, v
        for batch in args.batch_sizes:
            for context in args.contexts:
                q = torch.randn(batch, args.q_heads, 1, args.head_dim, device=device, dtype=dtype,
                                generator=gen)
                k = torch.randn(batch, args.kv_heads, context, args.head_dim, device=device,
                                dtype=dtype, generator=gen)
                v = torch.randn_like(k)
                seconds = seconds_per_call(lambda: attend(q, k, v, False))
                kv_bytes = (k.numel() + v.numel()) * elem
                flops = 4.0 * batch * context * args.q_heads * args.head_dim
                report("decode_attention", f"batch={batch} context={context}", seconds,
                       kv_bytes / seconds / 1e9, flops / seconds / 1e12, 0)
                del q, k, v
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
