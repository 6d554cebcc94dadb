#!/usr/bin/env python3
"""Generates tessera's numerical-truth fixtures from Hugging Face transformers.

For each fixture this script builds a tiny randomly initialised decoder-only model with
transformers, saves it with save_pretrained(safe_serialization=True) under
tests/reference/fixtures/<name>/, and records reference outputs computed by transformers itself
(float32, CPU, eager attention) in reference.safetensors + reference.json.

Usage (see README.md for the environment):
    python make_fixtures.py [--out DIR] [--only NAME ...]

Everything is deterministic (fixed seeds); re-running with the pinned versions reproduces the
fixtures bit for bit except for float rounding differences between CPU builds of torch.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures")

VOCAB = 256
PROMPT_LENGTHS = (1, 7, 19, 40)
PROMPT_SEED = 20240607  # the prompts do not depend on the weight seed
NUM_GREEDY = 16
# Smallest allowed top-1 minus top-2 logit at every greedy step (absolute). 1e-3 would be enough
# for an f32 engine (errors ~1e-5); 1e-2 leaves headroom for reduced-precision accumulation.
MIN_MARGIN = 1e-2
WEIGHT_STD = 0.2  # linear / embedding weights ~ N(0, WEIGHT_STD)
NORM_STD = 0.1  # norm weights ~ 1 + N(0, NORM_STD)
BIAS_STD = 0.1  # biases ~ N(0, BIAS_STD)
BOS, EOS = 1, 2

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=None,
)


def llama_gqa():
    config = LlamaConfig(
        **COMMON,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        # llama3 scaling. original_max_position_embeddings (200) is chosen so that, with head_dim 8
        # and theta 5e5, the four frequencies hit all three llama3 branches: wavelength 6.28
        # (< 200/4 = 50: kept), 167.6 (in [50, 200]: smoothed), 4.5e3 and 1.2e5 (> 200: divided
        # by factor). transformers warns unless it is < max_position_embeddings (256).
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 200,
        },
    )
    return LlamaForCausalLM, config, torch.float32


def qwen2_bias():
    config = Qwen2Config(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        use_sliding_window=False,
    )
    return Qwen2ForCausalLM, config, torch.float32


def mistral():
    config = MistralConfig(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        sliding_window=None,
    )
    return MistralForCausalLM, config, torch.bfloat16


def qwen3_qknorm():
    config = Qwen3Config(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # != hidden_size / num_attention_heads (16)
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        use_sliding_window=False,
        attention_bias=False,
    )
    return Qwen3ForCausalLM, config, torch.float16


# name -> (builder, save kwargs)
FIXTURES = {
    "llama_gqa": (llama_gqa, {}),
    # ~420 KB of f32 weights: 150KB shards give 3 files plus model.safetensors.index.json.
    "qwen2_bias": (qwen2_bias, {"max_shard_size": "150KB"}),
    "mistral": (mistral, {}),
    "qwen3_qknorm": (qwen3_qknorm, {}),
}


def make_prompts():
    rng = np.random.default_rng(PROMPT_SEED)
    return [torch.tensor(rng.integers(0, VOCAB, size=n), dtype=torch.int64) for n in PROMPT_LENGTHS]


@torch.no_grad()
def randomize(model, seed):
    """Re-initialises every parameter with larger scales so logits are well separated."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):  # input/post-attention/final/q/k norms
            p.copy_(1.0 + NORM_STD * noise)
        elif name.endswith(".bias"):
            p.copy_(BIAS_STD * noise)
        else:
            p.copy_(WEIGHT_STD * noise)


@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=ids[None, :], use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, ids):
    """Greedy decode by re-running the whole sequence each step (no KV cache, eos ignored)."""
    seq = ids.clone()
    tokens, margin = [], float("inf")
    for _ in range(NUM_GREEDY):
        last = logits_of(model, seq)[-1]
        top = torch.topk(last, 2)
        margin = min(margin, float(top.values[0] - top.values[1]))
        tok = int(top.indices[0])
        tokens.append(tok)
        seq = torch.cat([seq, torch.tensor([tok], dtype=torch.int64)])
    return torch.tensor(tokens, dtype=torch.int64), margin


def build(name, seed):
    builder, _ = FIXTURES[name]
    cls, config, storage_dtype = builder()
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    randomize(model, seed)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if storage_dtype != torch.float32:
        # Round the weights to the storage dtype; the reference runs in f32 on the rounded values.
        # Only parameters: model.to(dtype) would also round the rotary inv_freq buffer, which
        # transformers recomputes in f32 when it loads the checkpoint.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(storage_dtype).to(torch.float32))
    return model, config, storage_dtype


def generate_fixture(name, out_root, base_seed):
    prompts = make_prompts()
    for attempt in range(200):
        seed = base_seed + attempt
        model, config, storage_dtype = build(name, seed)
        results, min_margin = [], float("inf")
        for ids in prompts:
            logits = logits_of(model, ids)
            tokens, margin = greedy(model, ids)
            min_margin = min(min_margin, margin)
            results.append((ids, logits, tokens))
        if min_margin >= MIN_MARGIN:
            break
        print(f"  {name}: seed {seed} has greedy margin {min_margin:.2e} < {MIN_MARGIN}; reseeding")
    else:
        sys.exit(f"{name}: no seed with greedy margin >= {MIN_MARGIN}")

    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS, eos_token_id=EOS, do_sample=False, max_new_tokens=NUM_GREEDY
    )
    _, save_kwargs = FIXTURES[name]
    model.to(storage_dtype).save_pretrained(out, safe_serialization=True, **save_kwargs)

    tensors = {}
    for i, (ids, logits, tokens) in enumerate(results):
        tensors[f"prompt{i}.ids"] = ids.contiguous()
        tensors[f"prompt{i}.logits"] = logits.contiguous()
        tensors[f"prompt{i}.greedy"] = tokens.contiguous()
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    meta = {
        "architecture": type(model).__name__,
        "num_prompts": len(results),
        "storage_dtype": str(storage_dtype).replace("torch.", ""),
        "min_greedy_margin": min_margin,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "note": (
            "Random tiny checkpoint saved by transformers save_pretrained. prompt{i}.logits are "
            "the f32 logits of every position of one forward of prompt{i}.ids alone (no padding, "
            "no KV cache; CPU, eager attention, float32 computed from the weights exactly as "
            "stored, i.e. bf16/f16 weights upcast to f32). prompt{i}.greedy are 16 argmax "
            "tokens, each from a full re-run of the whole sequence; eos is ignored. "
            "min_greedy_margin is the smallest top-1 minus top-2 logit over all greedy steps."
        ),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"  {name}: seed {seed}, storage {meta['storage_dtype']}, min margin {min_margin:.4f}")


@torch.no_grad()
def verify_fixture(name, out_root):
    """Reloads a saved fixture with transformers and re-checks the recorded outputs."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = os.path.join(out_root, name)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref = load_file(os.path.join(path, "reference.safetensors"))
    meta = json.load(open(os.path.join(path, "reference.json")))
    worst = 0.0
    for i in range(meta["num_prompts"]):
        ids = ref[f"prompt{i}.ids"]
        diff = (logits_of(model, ids) - ref[f"prompt{i}.logits"]).abs().max().item()
        worst = max(worst, diff)
        tokens, _ = greedy(model, ids)
        assert torch.equal(tokens, ref[f"prompt{i}.greedy"]), f"{name} prompt{i}: greedy differs"
    assert worst <= 1e-5, f"{name}: reloaded logits differ by {worst}"
    inv_freq = model.model.rotary_emb.inv_freq
    print(f"  {name}: reload OK (max |logit diff| {worst:.2e}); inv_freq {inv_freq.tolist()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", choices=sorted(FIXTURES))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument(
        "--verify", action="store_true", help="only reload existing fixtures and check them"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name in args.only or FIXTURES:
        if not args.verify:
            generate_fixture(name, args.out, args.seed + 100 * list(FIXTURES).index(name))
        verify_fixture(name, args.out)


if __name__ == "__main__":
    main()
