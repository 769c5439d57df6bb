#!/usr/bin/env python3
"""Generate tiny random-weight Hugging Face model fixtures plus float64 reference logits.

Usage:
    python3 scripts/make_fixtures.py                 # (re)write everything under test/fixtures/
    python3 scripts/make_fixtures.py --check-stories # validate the numpy forward on stories260K

Only numpy is required. The safetensors files are written by hand, and the reference
forward below is an independent float64 implementation of the Hugging Face
Llama / Qwen2 / Mistral causal-LM forward pass, written from the math:

    x = embed[ids]
    per layer:  h = x + o_proj(attn(rmsnorm(x)))
                x = h + down(silu(gate(n)) * up(n)),  n = rmsnorm(h)
    logits = rmsnorm_final(x) @ lm_head.T   (embed_tokens.T when tied)

RoPE uses the HF rotate_half convention; the llama3 rope scaling follows HF's
_compute_llama3_parameters. The reference is computed from the weights *read back
from the written file* (so F16/BF16 fixtures are referenced at their rounded values).
Everything is deterministic (fixed RandomState seeds).
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
STORIES = "/work/shared/models/stories260K/hf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# ----------------------------------------------------------------------------------
# safetensors I/O (by hand)
# ----------------------------------------------------------------------------------

_DT_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


def f32_to_bf16_bits(a):
    """Round float32 -> bfloat16 (round-to-nearest-even), returning uint16 bit patterns."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    assert np.all(np.isfinite(a))
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode_tensor(arr, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(np.asarray(arr, dtype=np.float32).astype("<f2")).tobytes()
    if dtype == "BF16":
        return np.ascontiguousarray(f32_to_bf16_bits(np.asarray(arr, dtype=np.float32))).astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype):
    """tensors: dict name -> float array (any float dtype); all stored with `dtype`."""
    names = sorted(tensors)
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in names:
        arr = np.asarray(tensors[name])
        raw = encode_tensor(arr, dtype)
        assert len(raw) == arr.size * _DT_ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(8 + len(hjson))) % 8
    hjson += b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    """Returns dict name -> float64 array (exact upcast of the stored values)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        buf = data[base + s : base + e]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2")
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
        else:
            raise ValueError("unsupported dtype %s" % dt)
        out[name] = a.astype(np.float64).reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------------
# float64 reference forward
# ----------------------------------------------------------------------------------


def rope_inv_freq(cfg):
    """Inverse frequencies (float64), including HF llama3 scaling when configured.

    Returns (inv_freq, regimes) where regimes is None or a list of 'high'/'low'/'mid' per index.
    """
    hd = head_dim(cfg)
    theta = float(cfg.get("rope_theta", 10000.0))
    i = np.arange(hd // 2, dtype=np.float64)
    inv = theta ** (-(2.0 * i) / hd)
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv, None
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype != "llama3":
        raise ValueError("unsupported rope_scaling %r" % rtype)
    factor = float(rs["factor"])
    low = float(rs["low_freq_factor"])
    high = float(rs["high_freq_factor"])
    orig = float(rs["original_max_position_embeddings"])
    low_freq_wavelen = orig / low
    high_freq_wavelen = orig / high
    out = np.empty_like(inv)
    regimes = []
    for k, f in enumerate(inv):
        wavelen = 2.0 * math.pi / f
        if wavelen < high_freq_wavelen:
            out[k] = f
            regimes.append("high")
        elif wavelen > low_freq_wavelen:
            out[k] = f / factor
            regimes.append("low")
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out[k] = (1.0 - smooth) * f / factor + smooth * f
            regimes.append("mid")
    return out, regimes


def head_dim(cfg):
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(W, cfg, ids):
    """Float64 HF-convention causal-LM forward; returns logits [T, V]."""
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    D = cfg["hidden_size"]
    Hq = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", Hq)
    hd = head_dim(cfg)
    eps = float(cfg["rms_norm_eps"])
    L = cfg["num_hidden_layers"]
    group = Hq // Hkv

    inv, _ = rope_inv_freq(cfg)
    pos = np.arange(T, dtype=np.float64)
    freqs = np.outer(pos, inv)  # [T, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [T, hd]
    cos, sin = np.cos(emb), np.sin(emb)

    def lin(x, name, bias=True):
        y = x @ W[name + ".weight"].T
        b = W.get(name + ".bias") if bias else None
        return y if b is None else y + b

    x = W["model.embed_tokens.weight"][ids]  # [T, D]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    scale = 1.0 / math.sqrt(hd)
    for l in range(L):
        p = "model.layers.%d." % l
        n = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(n, p + "self_attn.q_proj").reshape(T, Hq, hd).transpose(1, 0, 2)  # [Hq,T,hd]
        k = lin(n, p + "self_attn.k_proj").reshape(T, Hkv, hd).transpose(1, 0, 2)
        v = lin(n, p + "self_attn.v_proj").reshape(T, Hkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = np.empty((Hq, T, hd))
        for h in range(Hq):
            kh = h // group
            s = (q[h] @ k[kh].T) * scale + mask
            s = s - s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            attn[h] = pr @ v[kh]
        a = attn.transpose(1, 0, 2).reshape(T, Hq * hd)
        h_ = x + lin(a, p + "self_attn.o_proj")
        n2 = rmsnorm(h_, W[p + "post_attention_layernorm.weight"], eps)
        m = silu(lin(n2, p + "mlp.gate_proj")) * lin(n2, p + "mlp.up_proj")
        x = h_ + lin(m, p + "mlp.down_proj")
    xf = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None or cfg.get("tie_word_embeddings", False):
        head = W["model.embed_tokens.weight"]
    return xf @ head.T


def top2_margin(row):
    s = np.sort(row)
    return float(s[-1] - s[-2])


def greedy(W, cfg, ids, n, with_margin=False):
    """n argmax tokens continuing ids (full re-forward each step, no EOS stop)."""
    seq = list(ids)
    out = []
    margin = math.inf
    for _ in range(n):
        last = forward(W, cfg, seq)[-1]
        t = int(np.argmax(last))
        margin = min(margin, top2_margin(last))
        out.append(t)
        seq.append(t)
    return (out, margin) if with_margin else out


# ----------------------------------------------------------------------------------
# GPT-2: float64 forward, weights, and a small byte-level BPE tokenizer
# ----------------------------------------------------------------------------------
#
# HF GPT2LMHeadModel, written from the math (Conv1D weights are [in, out]: y = x @ W + b):
#
#     x = wte[ids] + wpe[positions]
#     per layer:  h = x + c_proj(attn(ln_1(x)))     qkv = ln_1(x) @ c_attn.W + c_attn.b, split q | k | v
#                 x = h + mlp.c_proj(gelu_new(mlp.c_fc(ln_2(h))))
#     logits = ln_f(x) @ wte.T                       (tied head)
#
# LayerNorm: (x - mean) / sqrt(var + eps) * w + b (biased variance); gelu_new is the tanh form
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); attention: causal softmax of q k^T / sqrt(head_dim)
# per head (no RoPE), heads concatenated.


def layernorm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_forward(W, cfg, ids, prefix=""):
    """Float64 HF GPT-2 forward; returns logits [T, V]. W holds Conv1D weights as stored ([in, out])."""
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    D = cfg["n_embd"]
    H = cfg["n_head"]
    hd = D // H
    eps = float(cfg["layer_norm_epsilon"])
    g = lambda n: W[prefix + n]
    x = g("wte.weight")[ids] + g("wpe.weight")[np.arange(T)]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        n1 = layernorm(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"), eps)
        qkv = n1 @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")  # [T, 3D]
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        q = q.reshape(T, H, hd).transpose(1, 0, 2)
        k = k.reshape(T, H, hd).transpose(1, 0, 2)
        v = v.reshape(T, H, hd).transpose(1, 0, 2)
        att = np.empty((H, T, hd))
        for h in range(H):
            sc = (q[h] @ k[h].T) / math.sqrt(hd) + mask
            sc = sc - sc.max(axis=-1, keepdims=True)
            pr = np.exp(sc)
            pr /= pr.sum(axis=-1, keepdims=True)
            att[h] = pr @ v[h]
        a = att.transpose(1, 0, 2).reshape(T, D)
        h_ = x + a @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
        n2 = layernorm(h_, g(p + "ln_2.weight"), g(p + "ln_2.bias"), eps)
        m = gelu_new(n2 @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias"))
        x = h_ + m @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    xf = layernorm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
    return xf @ g("wte.weight").T


def gpt2_greedy(W, cfg, ids, n):
    seq = list(ids)
    out = []
    margin = math.inf
    for _ in range(n):
        last = gpt2_forward(W, cfg, seq)[-1]
        t = int(np.argmax(last))
        margin = min(margin, top2_margin(last))
        out.append(t)
        seq.append(t)
    return out, margin


def gpt2_weights(cfg, seed):
    rs = np.random.RandomState(seed)
    D = cfg["n_embd"]
    F = cfg["n_inner"] or 4 * D
    V = cfg["vocab_size"]
    W = {}
    W["wte.weight"] = rs.normal(0.0, 0.5, size=(V, D))
    W["wpe.weight"] = rs.normal(0.0, 0.2, size=(cfg["n_positions"], D))
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        for n in ("ln_1", "ln_2"):
            W[p + n + ".weight"] = 1.0 + 0.1 * rs.normal(size=D)
            W[p + n + ".bias"] = 0.1 * rs.normal(size=D)
        W[p + "attn.c_attn.weight"] = rs.normal(0.0, 0.2, size=(D, 3 * D))  # Conv1D [in, out]
        W[p + "attn.c_attn.bias"] = rs.normal(0.0, 0.1, size=3 * D)
        W[p + "attn.c_proj.weight"] = rs.normal(0.0, 0.2, size=(D, D))
        W[p + "attn.c_proj.bias"] = rs.normal(0.0, 0.1, size=D)
        W[p + "mlp.c_fc.weight"] = rs.normal(0.0, 0.2, size=(D, F))
        W[p + "mlp.c_fc.bias"] = rs.normal(0.0, 0.1, size=F)
        W[p + "mlp.c_proj.weight"] = rs.normal(0.0, 0.15, size=(F, D))
        W[p + "mlp.c_proj.bias"] = rs.normal(0.0, 0.1, size=D)
    W["ln_f.weight"] = 1.0 + 0.1 * rs.normal(size=D)
    W["ln_f.bias"] = 0.1 * rs.normal(size=D)
    return W


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves;
    the others to U+0100 onwards), in GPT-2's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


# ASCII approximation of GPT-2's pre-tokenizer regex (contractions, ' ?letters', ' ?digits',
# ' ?other', whitespace runs); used only to learn the merges and to encode the test strings below,
# which are plain ASCII.
import re as _re
_GPT2_PAT = _re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")

BPE_CORPUS = (
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome. "
    "Who is the president of the company? The president of the company is Jane Doe. "
    "Once upon a time there was a little girl who lived in a house with her mother and her father. "
    "She liked to play in the garden with the dog and the cat. One day the sun was shining and the "
    "birds were singing in the trees. The wizard lived in a purple castle on the hill. "
    "What is the name of the river that flows through the city? The river is called the Thames. "
    "In 1990 the team won the cup, and in 2004 they won it again. The answer is yes, not no. "
    "I think that you should go to the park because it is a nice day. Yes, we will go there today. "
    "Q: Where was the writer born? A: The writer was born in London. "
)
BPE_MERGES = 255  # 256 byte tokens + 255 merges + <|endoftext|> = 512 ids


def _pretokens(text):
    b2u = dict(bytes_to_unicode())
    return ["".join(b2u[c] for c in tok.encode("utf-8")) for tok in _GPT2_PAT.findall(text)]


def learn_merges(corpus, n_merges):
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    words = {}
    for w in _pretokens(corpus):
        words[w] = words.get(w, 0) + 1
    segs = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w, f in words.items():
            s = segs[w]
            for i in range(len(s) - 1):
                counts[(s[i], s[i + 1])] = counts.get((s[i], s[i + 1]), 0) + f
        if not counts:
            break
        best = min(counts, key=lambda pr: (-counts[pr], pr))
        merges.append(best)
        for w in words:
            s = segs[w]
            out = []
            i = 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def bpe_encode(text, vocab, merges):
    """Reference BPE encoding (GPT-2 rules: per pre-token, merge the lowest-ranked pair until none)."""
    rank = {m: i for i, m in enumerate(merges)}
    ids = []
    for w in _pretokens(text):
        s = list(w)
        while len(s) > 1:
            pairs = [(rank.get((s[i], s[i + 1]), 1 << 30), i) for i in range(len(s) - 1)]
            r, _ = min(pairs)
            if r == 1 << 30:
                break
            a, b = merges[r]
            out = []
            i = 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            s = out
        ids.extend(vocab[t] for t in s)
    return ids


def gpt2_tokenizer():
    """A byte-level BPE tokenizer.json (GPT-2 format) with 256 byte tokens in GPT-2's order, the learned
    merges, and <|endoftext|> as the last id."""
    vocab = {}
    for _, ch in bytes_to_unicode():
        vocab[ch] = len(vocab)
    merges = learn_merges(BPE_CORPUS, BPE_MERGES)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    eot = len(vocab)
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }
    tc = {"add_bos_token": False, "add_prefix_space": False, "bos_token": "<|endoftext|>",
          "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 64,
          "tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False}
    return tj, tc, vocab, merges, eot


GPT2_CFG = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 64,
    "n_ctx": 64,
    "n_inner": None,
    "vocab_size": 512,
    "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "scale_attn_weights": True,
    "initializer_range": 0.02,
    "bos_token_id": 511,
    "eos_token_id": 511,
    "tie_word_embeddings": True,
    "use_cache": True,
    "torch_dtype": "float32",
}
GPT2_SEED = 9  # picked so the greedy continuation is not repetitive (11 distinct of 16) with a clear margin
GPT2_TEXTS = [
    "The capital of France is Paris.",
    "Hello world",
    " leading space and  two spaces",
    "Numbers 1990 and 2004, done!",
    "The wizard Zog lived in a purple castle",
]


def build_gpt2():
    name = "tiny-gpt2"
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    cfg = GPT2_CFG
    tj, tc, vocab, merges, eot = gpt2_tokenizer()
    assert eot == cfg["vocab_size"] - 1, "tokenizer size %d != vocab_size" % (eot + 1)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")
    W = gpt2_weights(cfg, GPT2_SEED)
    write_safetensors(os.path.join(d, "model.safetensors"), W, "F32")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    Wr = read_safetensors(os.path.join(d, "model.safetensors"))
    rs = np.random.RandomState(CASE_SEED)
    cases_ids = [[int(t) for t in rs.randint(0, eot, size=n)] for n in CASE_LENGTHS]
    ref_cases = []
    for ids in cases_ids:
        logits = gpt2_forward(Wr, cfg, ids)
        positions = list(range(len(ids))) if len(ids) < 23 else list(LONG_POSITIONS)
        ref_cases.append({
            "input_ids": ids,
            "positions": positions,
            "logits_all": [[fmt6(v) for v in logits[p]] for p in positions],
            "argmax_all": [int(np.argmax(logits[p])) for p in range(len(ids))],
            "argmax_min_margin": round(min(top2_margin(r) for r in logits), 6),
        })
    g, gmargin = gpt2_greedy(Wr, cfg, cases_ids[1], GREEDY_N)
    tok_cases = [{"text": t, "ids": bpe_encode(t, vocab, merges)} for t in GPT2_TEXTS]
    ref = {
        "note": ("float64 reference logits from an independent numpy implementation of the HF GPT2LMHeadModel "
                 "forward (scripts/make_fixtures.py: LayerNorm with bias, learned positions, fused c_attn, "
                 "gelu_new, Conv1D [in, out] weights, tied head), computed from the weights as stored (F32). "
                 "Layout as in the other fixtures (cases / positions / logits_all / argmax_all / greedy_16). "
                 "'tokenizer_cases' are reference encodings of plain-ASCII strings by an independent BPE "
                 "encoder (GPT-2 merge rules) over this folder's vocabulary and merges."),
        "model_type": "gpt2",
        "dtype": "F32",
        "inv_freq": [],
        "cases": ref_cases,
        "greedy_16": g,
        "greedy_16_min_margin": round(gmargin, 6),
        "tokenizer_cases": tok_cases,
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    print("%s (gpt2, F32): D 64, 2 layers, 4 heads, n_positions 64, vocab %d (256 bytes + %d merges + eot)"
          % (name, eot + 1, len(merges)))
    last = ref_cases[2]["logits_all"][-1]
    print("  case[2] last-position logits: min %.3f max %.3f std %.3f" % (min(last), max(last), float(np.std(last))))
    print("  argmax_min_margin per case: %s" % [c["argmax_min_margin"] for c in ref_cases])
    print("  greedy_16: %s (min top1-top2 margin %.3f)" % (g, gmargin))
    for c in tok_cases:
        print("  tokens of %r: %s" % (c["text"], c["ids"]))
    print("  size: %d bytes (tokenizer.json %d, reference.json %d)"
          % (dir_size(d), os.path.getsize(os.path.join(d, "tokenizer.json")),
             os.path.getsize(os.path.join(d, "reference.json"))))


# ----------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------


def gen_weights(cfg, seed, qkv_bias, matrix_std):
    rs = np.random.RandomState(seed)
    D = cfg["hidden_size"]
    F = cfg["intermediate_size"]
    V = cfg["vocab_size"]
    Hq = cfg["num_attention_heads"]
    Hkv = cfg["num_key_value_heads"]
    hd = head_dim(cfg)
    W = {}
    mat = lambda *shape: rs.normal(0.0, matrix_std, size=shape)
    norm = lambda n: 1.0 + 0.1 * rs.normal(size=n)
    W["model.embed_tokens.weight"] = rs.normal(0.0, 0.5, size=(V, D))
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = norm(D)
        W[p + "self_attn.q_proj.weight"] = mat(Hq * hd, D)
        W[p + "self_attn.k_proj.weight"] = mat(Hkv * hd, D)
        W[p + "self_attn.v_proj.weight"] = mat(Hkv * hd, D)
        W[p + "self_attn.o_proj.weight"] = mat(D, Hq * hd)
        if qkv_bias:
            W[p + "self_attn.q_proj.bias"] = rs.normal(0.0, 0.1, size=Hq * hd)
            W[p + "self_attn.k_proj.bias"] = rs.normal(0.0, 0.1, size=Hkv * hd)
            W[p + "self_attn.v_proj.bias"] = rs.normal(0.0, 0.1, size=Hkv * hd)
        W[p + "post_attention_layernorm.weight"] = norm(D)
        W[p + "mlp.gate_proj.weight"] = mat(F, D)
        W[p + "mlp.up_proj.weight"] = mat(F, D)
        W[p + "mlp.down_proj.weight"] = mat(D, F)
    W["model.norm.weight"] = norm(D)
    if not cfg["tie_word_embeddings"]:
        W["lm_head.weight"] = rs.normal(0.0, 0.2, size=(V, D))  # larger than 0.05 so logits are not flat
    return W


QWEN2_CFG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "float32",
}

LLAMA3_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "use_cache": True,
    "torch_dtype": "float32",
}

MISTRAL_CFG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 512,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": None,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "float16",
}

# name, config, dtype, weight seed, qkv bias, projection-matrix std, description
# (matrix std / seeds were picked so that the layers visibly change the residual stream --
# with std 0.05 the tied Qwen2 model just predicts its input token -- and so that the
# greedy continuation is non-repetitive with a comfortable top-1/top-2 margin)
FIXTURE_SPECS = [
    ("tiny-qwen2", QWEN2_CFG, "F32", 32, True, 0.2,
     "Qwen2: GQA 4:1, q/k/v bias, tied embeddings, rope_theta 1e6, F32"),
    ("tiny-llama3", LLAMA3_CFG, "F32", 2002, False, 0.1,
     "Llama 3: GQA 3:1, head_dim 16, llama3 rope scaling (all three regimes), untied lm_head, F32"),
    ("tiny-llama3-bf16", dict(LLAMA3_CFG, torch_dtype="bfloat16"), "BF16", 2002, False, 0.1,
     "same weights as tiny-llama3 rounded (RNE) to BF16; reference from the rounded weights"),
    ("tiny-mistral", MISTRAL_CFG, "F16", 17, False, 0.1,
     "Mistral (Llama-identical forward, sliding_window null): GQA 2:1, untied, F16"),
]

CASE_SEED = 4242
CASE_LENGTHS = (1, 7, 23)
GREEDY_N = 16
# Logits for the length-23 case are stored only at these positions (keeps each
# reference.json small); shorter cases store every position.
LONG_POSITIONS = [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22]


def make_cases():
    rs = np.random.RandomState(CASE_SEED)
    return [[1] + [int(t) for t in rs.randint(3, 512, size=n - 1)] for n in CASE_LENGTHS]


def fmt6(x):
    """6 significant digits as a JSON-safe float."""
    return float("%.6g" % x)


def build_fixture(name, cfg, dtype, seed, qkv_bias, matrix_std, desc, cases):
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    W = gen_weights(cfg, seed, qkv_bias, matrix_std)
    write_safetensors(os.path.join(d, "model.safetensors"), W, dtype)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for t in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(STORIES, t), os.path.join(d, t))

    # reference from the weights as stored (read back from disk)
    Wr = read_safetensors(os.path.join(d, "model.safetensors"))
    assert sorted(Wr) == sorted(W)
    if dtype == "F32":
        assert all(np.array_equal(Wr[k], W[k].astype(np.float32)) for k in W)
    inv, regimes = rope_inv_freq(cfg)
    ref_cases = []
    for ids in cases:
        logits = forward(Wr, cfg, ids)
        positions = list(range(len(ids))) if len(ids) < 23 else list(LONG_POSITIONS)
        ref_cases.append({
            "input_ids": ids,
            "positions": positions,
            "logits_all": [[fmt6(v) for v in logits[p]] for p in positions],
            "argmax_all": [int(np.argmax(logits[p])) for p in range(len(ids))],
            "argmax_min_margin": round(min(top2_margin(r) for r in logits), 6),
        })
    g, gmargin = greedy(Wr, cfg, cases[1], GREEDY_N, with_margin=True)
    ref = {
        "note": ("float64 reference logits from an independent numpy implementation of the HF %s "
                 "forward (scripts/make_fixtures.py), computed from the weights exactly as stored "
                 "(%s). %s. 'positions' lists the token positions whose logits are in "
                 "'logits_all' (rows in that order; rounded to 6 significant digits); 'argmax_all' "
                 "gives the argmax at every position ('argmax_min_margin': smallest top1-top2 logit gap). 'greedy_16' continues cases[1].input_ids with "
                 "16 argmax tokens (no EOS stop; 'greedy_16_min_margin' is the smallest top1-top2 gap "
                 "along the way). 'inv_freq' is the RoPE inverse frequency vector "
                 "used (after rope scaling, if any)." % (cfg["model_type"], dtype, desc)),
        "model_type": cfg["model_type"],
        "dtype": dtype,
        "inv_freq": [float(v) for v in inv],
        "cases": ref_cases,
        "greedy_16": g,
        "greedy_16_min_margin": round(gmargin, 6),
    }
    if regimes is not None:
        ref["inv_freq_regimes"] = regimes
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    return W, Wr, inv, regimes, ref


def report_regimes(cfg):
    inv, regimes = rope_inv_freq(cfg)
    if regimes is None:
        return
    rs = cfg["rope_scaling"]
    orig = rs["original_max_position_embeddings"]
    print("  llama3 rope: low_freq_wavelen=%g high_freq_wavelen=%g"
          % (orig / rs["low_freq_factor"], orig / rs["high_freq_factor"]))
    theta = cfg["rope_theta"]
    hd = head_dim(cfg)
    for k, r in enumerate(regimes):
        base = theta ** (-2.0 * k / hd)
        print("    i=%d wavelen=%10.2f  %-4s inv_freq %.6e -> %.6e" % (k, 2 * math.pi / base, r, base, inv[k]))
    for want in ("high", "low", "mid"):
        assert want in regimes, "llama3 regime %r does not occur" % want
    print("  regimes: high(unscaled)=%s low(scaled)=%s mid(smoothed)=%s"
          % tuple([k for k, r in enumerate(regimes) if r == w] for w in ("high", "low", "mid")))


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def make_all():
    cases = make_cases()
    print("cases: lengths %s; case[1] = %s" % ([len(c) for c in cases], cases[1]))
    for name, cfg, dtype, seed, bias, mstd, desc in FIXTURE_SPECS:
        W, Wr, inv, regimes, ref = build_fixture(name, cfg, dtype, seed, bias, mstd, desc, cases)
        print("%s (%s, %s): %s" % (name, cfg["model_type"], dtype, desc))
        if dtype != "F32":
            err = max(float(np.max(np.abs(Wr[k] - W[k]))) for k in W)
            print("  max |stored - f64 weight| = %.3g" % err)
        report_regimes(cfg)
        last = ref["cases"][2]["logits_all"][-1]
        print("  case[2] last-position logits: min %.3f max %.3f std %.3f"
              % (min(last), max(last), float(np.std(last))))
        print("  greedy_16: %s (min top1-top2 margin %.3f)" % (ref["greedy_16"], ref["greedy_16_min_margin"]))
        print("  size: %d bytes (reference.json %d)"
              % (dir_size(os.path.join(FIXTURES, name)),
                 os.path.getsize(os.path.join(FIXTURES, name, "reference.json"))))
    build_gpt2()
    print("total test/fixtures size: %d bytes" % dir_size(FIXTURES))


def check_stories():
    with open(os.path.join(STORIES, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(STORIES, "reference_outputs.json")) as f:
        ref = json.load(f)
    W = read_safetensors(os.path.join(STORIES, "model.safetensors"))
    ok = True
    worst = 0.0
    for case in ref["cases"]:
        ids = case["input_ids"]
        last = forward(W, cfg, ids)[-1]
        diffs = [abs(last[i] - v) for i, v in enumerate(case["last_logits_first8"])]
        diffs += [abs(last[e["id"]] - e["logit"]) for e in case["last_logits_top5"]]
        top5 = [int(i) for i in np.argsort(-last)[:5]]
        want_top5 = [e["id"] for e in case["last_logits_top5"]]
        d = max(diffs)
        worst = max(worst, d)
        good = d <= 1e-4 and top5 == want_top5
        gmsg = ""
        if "greedy_32_ids" in case:
            g = greedy(W, cfg, ids, len(case["greedy_32_ids"]))
            gok = g == case["greedy_32_ids"]
            good &= gok
            gmsg = ", greedy_%d %s" % (len(g), "match" if gok else "MISMATCH")
        ok &= good
        print("stories260K %s: max |diff| = %.2e, top5 %s %s%s -> %s"
              % (ids, d, top5, "==" if top5 == want_top5 else "!=", gmsg, "OK" if good else "FAIL"))
    print("check-stories: %s (worst %.2e, tolerance 1e-4)" % ("PASS" if ok else "FAIL", worst))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-stories", action="store_true",
                    help="only validate the float64 forward against stories260K reference_outputs.json")
    ap.add_argument("--gpt2-only", action="store_true", help="only (re)write test/fixtures/tiny-gpt2/")
    args = ap.parse_args()
    if args.check_stories:
        sys.exit(0 if check_stories() else 1)
    if args.gpt2_only:
        build_gpt2()
        return
    make_all()


if __name__ == "__main__":
    main()
