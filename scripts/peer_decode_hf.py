#!/usr/bin/env python3
"""The peer of `tessera bench-engine`: Hugging Face transformers (PyTorch) at the same model shape
(the same presets), random weights, the same batch sizes, prompt length and decode steps, on the
same device. Prints prefill and decode tokens/s per batch size; with --compare, reads a
`tessera bench-engine` log of the same run and prints tessera's tokens/s as a ratio of these.

    python3 scripts/peer_decode_hf.py --preset llama-8b --device cuda --dtype bfloat16 \
        --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 --compare bench_engine.log

Needs torch and transformers (pip); exits 2 with a message when they are missing, so that a
machine without them skips the comparison instead of failing the run. A benchmark: reports only.
"""
import argparse
import sys
import time

from peer_util import table_rows, torch_on

PRESETS = {  # launch/model_flags.cc
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                     num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True,
                     rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0,
                                       original_max_position_embeddings=8192)),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=False,
                     rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0,
                                       original_max_position_embeddings=8192)),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compare", help="a `tessera bench-engine` log of the same shapes")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes '{args.batch_sizes}' is not a comma-separated list of integers")
    if min(args.batch_sizes) <= 0 or args.prompt_len <= 0 or args.decode_steps <= 0:
        p.error("batch sizes, --prompt-len and --decode-steps must be positive")
    return args


def tessera_rows(path):
    """{batch: (prefill tok/s, decode tok/s)} from a bench-engine log's table."""
    # batch prompt prefill-tok/s vs-GEMM% decode-tok/s decode-GB/s vs-copy% comm%
    return table_rows(path, r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+[\d.]+%\s+([\d.]+)\s",
                      lambda m: (int(m.group(1)), (float(m.group(3)), float(m.group(4)))))


def main(argv):
    args = parse_args(argv)
    found = torch_on(args.device, "peer_decode_hf", "pip install torch transformers")
    if found is None:
        return 2
    torch, device = found
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(f"peer_decode_hf: skipped: {e} (pip install transformers)", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(**PRESETS[args.preset], max_length=None)
    torch.manual_seed(1)
    # Built on the device in the dtype directly: an 8B model in f32 on the host would not fit.
    with torch.device(device):
        torch.set_default_dtype(dtype)
        model = LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {torch.get_num_threads()} threads")
    print(f"peer: transformers {__import__('transformers').__version__}, torch {torch.__version__},"
          f" {name}, {args.dtype}, attention {model.config._attn_implementation}")
    print(f"model: {args.preset}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # transformers >= 5.2x names the KV cache `cache` (argument and output); older ones
    # `past_key_values`.
    import inspect
    cache_name = ("cache" if "cache" in inspect.signature(model.forward).parameters
                  else "past_key_values")

    results = {}
    print(f"{'batch':>6} {'prompt':>8} {'prefill tok/s':>14} {'decode tok/s':>14}")
    with torch.inference_mode():
        for batch in args.batch_sizes:
            ids = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device=device)
            model(input_ids=ids[:, :8], use_cache=True)  # warm-up (kernels, allocator)
            sync()
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            sync()
            prefill = batch * args.prompt_len / (time.perf_counter() - start)
            past = getattr(out, cache_name)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            start = time.perf_counter()
            for _ in range(args.decode_steps):
                out = model(input_ids=token, use_cache=True, **{cache_name: past})
                past = getattr(out, cache_name)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            decode = batch * args.decode_steps / (time.perf_counter() - start)
            results[batch] = (prefill, decode)
            print(f"{batch:>6} {args.prompt_len:>8} {prefill:>14.1f} {decode:>14.2f}", flush=True)
            del out, past

    if args.compare:
        ours = tessera_rows(args.compare)
        print(f"{'batch':>6} {'tessera/peer prefill':>22} {'tessera/peer decode':>22}")
        for batch, (prefill, decode) in results.items():
            if batch not in ours:
                print(f"{batch:>6} {'(not in ' + args.compare + ')':>45}")
                continue
            print(f"{batch:>6} {ours[batch][0] / prefill:>21.2f}x {ours[batch][1] / decode:>21.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
