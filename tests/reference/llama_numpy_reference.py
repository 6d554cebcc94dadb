#!/usr/bin/env python3
"""Independent numpy-only forward pass for the Llama-family fixtures (Llama, Mistral, Qwen2, Qwen3).

This is the exact math tessera's C++ engine must implement, written out without torch or
transformers. It reads a fixture directory (config.json + model.safetensors or sharded shards with
model.safetensors.index.json), runs every recorded prompt, and compares against the logits and
greedy tokens transformers recorded in reference.safetensors.

Usage:
    python llama_numpy_reference.py [FIXTURE_DIR ...]   # default: every dir under fixtures/

Needs only numpy and safetensors. Exit status 1 if any fixture is off by more than --tol.
"""

import argparse
import glob
import json
import math
import os
import struct
import sys

import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------------------------
# Checkpoint loading
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I8": "i1"}


def read_safetensors_raw(path):
    """Minimal safetensors reader (numpy has no bfloat16, so safetensors.numpy cannot load BF16).

    Format: u64 little-endian header length N, then N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
    little-endian tensor bytes; offsets are relative to the end of the header. BF16 is the upper
    16 bits of an IEEE f32, so it is widened by shifting left 16 bits.
    """
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_ST_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def load_tensors(path):
    """Loads one .safetensors file; uses safetensors.numpy whenever numpy knows the dtype."""
    try:
        tensors = load_file(path)
    except TypeError:  # "data type 'bfloat16' not understood"
        return read_safetensors_raw(path)
    raw = read_safetensors_raw(path)  # cross-check the hand-written reader on the same file
    assert raw.keys() == tensors.keys()
    for k in tensors:
        assert np.array_equal(raw[k], tensors[k]), k
    return tensors


def load_checkpoint(fixture_dir):
    index = os.path.join(fixture_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            part = load_tensors(os.path.join(fixture_dir, shard))
            for name in part:
                assert weight_map[name] == shard, f"{name} not in {shard} per the index"
            tensors.update(part)
        assert tensors.keys() == weight_map.keys(), "index and shards disagree"
    else:
        tensors = load_tensors(os.path.join(fixture_dir, "model.safetensors"))
    return tensors


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def rope_parameters(cfg):
    """transformers 5.x writes `rope_parameters` = {"rope_type", "rope_theta", ...}; older configs
    (and most Hub checkpoints) have top-level `rope_theta` and optional `rope_scaling`."""
    if "rope_parameters" in cfg and cfg["rope_parameters"] is not None:
        params = dict(cfg["rope_parameters"])
    else:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    # Old configs spell the type "type" instead of "rope_type".
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def head_dim_of(cfg):
    # Qwen2 writes no head_dim key; Mistral writes it; Qwen3 may set it != hidden / heads.
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_inv_freq(cfg):
    """inv_freq as transformers computes it (float32 throughout)."""
    p = rope_parameters(cfg)
    dim = head_dim_of(cfg)  # partial_rotary_factor is not used by these models
    base = np.float32(p["rope_theta"])
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (base**exponent)).astype(np.float32)
    if p["rope_type"] == "default":
        return inv_freq
    if p["rope_type"] != "llama3":
        raise NotImplementedError(f"rope_type {p['rope_type']}")
    factor = p["factor"]
    low_freq_factor = p["low_freq_factor"]
    high_freq_factor = p["high_freq_factor"]
    old_context_len = p["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    # torch evaluates `2 * math.pi / inv_freq` as reciprocal(inv_freq) * 2pi in f32; doing the
    # same here reproduces transformers' inv_freq bit for bit (a plain division is 1-2 ulp off).
    wavelen = (np.float32(1.0) / inv_freq) * np.float32(2 * math.pi)
    # wavelen < high_freq_wavelen: keep; wavelen > low_freq_wavelen: divide by factor;
    # in between: interpolate with smooth = (old_ctx / wavelen - low) / (high - low).
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    # x * rsqrt(mean(x^2) + eps), THEN * weight (weight multiplies the normalised value).
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + eps)) * weight


def linear(x, w, b=None):
    y = x @ w.T  # HF/PyTorch Linear stores weight as [out_features, in_features]
    return y if b is None else y + b


def rotate_half(x):
    # Pairs element i with element i + d/2 (NOT adjacent pairs 2i, 2i+1 as in GPT-J/Meta style).
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


class Model:
    def __init__(self, fixture_dir, dtype=np.float32):
        with open(os.path.join(fixture_dir, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.dtype = dtype
        w = {k: v.astype(dtype) for k, v in load_checkpoint(fixture_dir).items()}
        self.w = w
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = head_dim_of(cfg)
        self.eps = cfg["rms_norm_eps"]
        self.inv_freq = rope_inv_freq(cfg)
        if cfg.get("tie_word_embeddings", False):
            # Tied checkpoints do not store lm_head.weight at all.
            assert "lm_head.weight" not in w
            self.lm_head = w["model.embed_tokens.weight"]
        else:
            self.lm_head = w["lm_head.weight"]
        self.window = None
        if cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True):
            raise NotImplementedError("sliding window attention (fixtures use none)")

    def rope(self, x, positions):
        # x: [T, H, D]. angle = float32(pos) * inv_freq (f32), cos/sin duplicated over both halves.
        freqs = positions.astype(np.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos = np.cos(emb).astype(self.dtype)[:, None, :]
        sin = np.sin(emb).astype(self.dtype)[:, None, :]
        return x * cos + rotate_half(x) * sin

    def attention(self, i, x, positions):
        w, p = self.w, f"model.layers.{i}.self_attn."
        T, D = x.shape[0], self.head_dim
        q = linear(x, w[p + "q_proj.weight"], w.get(p + "q_proj.bias")).reshape(T, self.n_heads, D)
        k = linear(x, w[p + "k_proj.weight"], w.get(p + "k_proj.bias")).reshape(T, self.n_kv, D)
        v = linear(x, w[p + "v_proj.weight"], w.get(p + "v_proj.bias")).reshape(T, self.n_kv, D)
        if p + "q_norm.weight" in w:  # Qwen3: RMSNorm over each head's D values, BEFORE RoPE
            q = rms_norm(q, w[p + "q_norm.weight"], self.eps)
            k = rms_norm(k, w[p + "k_norm.weight"], self.eps)
        q, k = self.rope(q, positions), self.rope(k, positions)
        group = self.n_heads // self.n_kv  # query head h reads kv head h // group
        scale = D**-0.5
        causal = np.tril(np.ones((T, T), dtype=bool))
        out = np.empty((T, self.n_heads, D), dtype=self.dtype)
        for h in range(self.n_heads):
            kv = h // group
            scores = (q[:, h, :] @ k[:, kv, :].T) * scale  # [T, T]
            scores = np.where(causal, scores, -np.inf)
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            out[:, h, :] = probs @ v[:, kv, :]
        # Heads are concatenated head-major: [T, H * D], then o_proj.
        return linear(out.reshape(T, self.n_heads * D), w[p + "o_proj.weight"], w.get(p + "o_proj.bias"))

    def mlp(self, i, x):
        w, p = self.w, f"model.layers.{i}.mlp."
        gate = linear(x, w[p + "gate_proj.weight"], w.get(p + "gate_proj.bias"))
        up = linear(x, w[p + "up_proj.weight"], w.get(p + "up_proj.bias"))
        return linear(silu(gate) * up, w[p + "down_proj.weight"], w.get(p + "down_proj.bias"))

    def forward(self, ids):
        """Logits [T, vocab] for token ids [T] at positions 0..T-1."""
        w = self.w
        positions = np.arange(len(ids))
        x = w["model.embed_tokens.weight"][ids]  # no embedding scaling in these models
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(i, rms_norm(x, w[p + "input_layernorm.weight"], self.eps), positions)
            x = x + self.mlp(i, rms_norm(x, w[p + "post_attention_layernorm.weight"], self.eps))
        x = rms_norm(x, w["model.norm.weight"], self.eps)
        return x @ self.lm_head.T

    def greedy(self, ids, n):
        seq = list(ids)
        for _ in range(n):  # full re-run each step, eos ignored
            seq.append(int(np.argmax(self.forward(np.array(seq))[-1])))
        return np.array(seq[len(ids) :])


def check(fixture_dir, tol):
    ref = load_file(os.path.join(fixture_dir, "reference.safetensors"))
    with open(os.path.join(fixture_dir, "reference.json")) as f:
        meta = json.load(f)
    name = os.path.basename(os.path.normpath(fixture_dir))
    ok = True
    for dtype in (np.float32, np.float64):
        model = Model(fixture_dir, dtype)
        worst, greedy_ok = 0.0, True
        for i in range(meta["num_prompts"]):
            ids = ref[f"prompt{i}.ids"]
            logits = model.forward(ids)
            worst = max(worst, float(np.abs(logits - ref[f"prompt{i}.logits"]).max()))
            expected = ref[f"prompt{i}.greedy"]
            greedy_ok &= bool(np.array_equal(model.greedy(ids, len(expected)), expected))
        ok &= worst <= tol and greedy_ok
        print(
            f"{name:14s} numpy {np.dtype(dtype).name}: max |logit diff| {worst:.3e}, "
            f"greedy {'match' if greedy_ok else 'MISMATCH'}"
        )
    if rope_parameters(model.cfg)["rope_type"] != "default":
        plain = dict(model.cfg, rope_parameters={"rope_type": "default",
                                                  "rope_theta": rope_parameters(model.cfg)["rope_theta"]})
        print(f"{'':14s} inv_freq unscaled {rope_inv_freq(plain).tolist()}")
        print(f"{'':14s} inv_freq scaled   {model.inv_freq.tolist()}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="*")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    dirs = args.fixtures or sorted(
        os.path.dirname(p) for p in glob.glob(os.path.join(HERE, "fixtures", "*", "config.json"))
    )
    ok = all([check(d, args.tol) for d in dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
