#!/usr/bin/env python3
# torch_peer.py — the PyTorch peer of the bench's "edit" section: one WISE edit step as EasyEdit's WISE
# runs it on the CPU — a full forward of the whole model over the same rows (the side memory replaces
# the edited layer's down_proj output), CE at the label positions + the routing-margin hinges over the
# per-row mean activation distance, backward to the side matrix only (the one trainable tensor),
# then the masked SGD update. Same model folder, same token rows, same thread count as our step.
#
#   python3 bench/torch_peer.py MODEL_DIR BATCH.json LAYER STEPS THREADS  ->  one JSON line
#
# BATCH.json: {tokens, R, T, pad, labels, kind} as bench/edit.ts gets them from Editor#buildBatch.
# Llama-family models with F32/F16/BF16 safetensors (no `transformers` or `safetensors` needed).
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[a:b]
        if t["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype=np.float32)
        elif t["dtype"] == "F16":
            arr = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        elif t["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"unsupported dtype {t['dtype']}")
        out[name] = torch.from_numpy(arr.copy()).reshape(t["shape"])
    return out


def main():
    model_dir, batch_file, layer, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    W = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    Hq = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", Hq)
    hd = cfg.get("head_dim", D // Hq)
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    b = json.load(open(batch_file))
    R, T = b["R"], b["T"]
    tokens = torch.tensor(b["tokens"], dtype=torch.long).reshape(R, T)
    labels = torch.tensor(b["labels"], dtype=torch.long).reshape(R, T)
    pad = torch.tensor(b["pad"], dtype=torch.long)
    kind = b["kind"]

    p = lambda n: W[n]
    emb = p("model.embed_tokens.weight")
    head = W.get("lm_head.weight", emb)
    # positions count from each row's first real token (left padding), as ours do
    pos = (torch.arange(T).unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos.unsqueeze(-1).float() * inv  # [R, T, hd/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).unsqueeze(1)  # [R, 1, T, hd]
    sin = torch.cat([ang.sin(), ang.sin()], -1).unsqueeze(1)
    keymask = torch.arange(T).unsqueeze(0) >= pad.unsqueeze(1)  # [R, T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    mask = causal.unsqueeze(0) & keymask.unsqueeze(1)  # [R, Tq, Tk]
    bias = torch.zeros(R, 1, T, T).masked_fill(~mask.unsqueeze(1), float("-inf"))
    bias = torch.nan_to_num(bias, neginf=-1e30)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], -1)

    side = p(f"model.layers.{layer}.mlp.down_proj.weight").clone().requires_grad_(True)
    base = p(f"model.layers.{layer}.mlp.down_proj.weight")
    keep = (torch.rand(base.shape) < 0.2).float()
    alpha, beta, gamma = 5.0, 20.0, 10.0
    lab = labels.clone()
    lab[lab < 0] = -100

    def step():
        x = emb[tokens]
        dist = None
        for l in range(L):
            q = f"model.layers.{l}."
            h = rms(x, p(q + "input_layernorm.weight"))
            Q = (h @ p(q + "self_attn.q_proj.weight").T).view(R, T, Hq, hd).transpose(1, 2)
            K = (h @ p(q + "self_attn.k_proj.weight").T).view(R, T, Hkv, hd).transpose(1, 2)
            V = (h @ p(q + "self_attn.v_proj.weight").T).view(R, T, Hkv, hd).transpose(1, 2)
            Q, K = Q * cos + rot(Q) * sin, K * cos + rot(K) * sin
            if Hkv != Hq:
                K = K.repeat_interleave(Hq // Hkv, 1)
                V = V.repeat_interleave(Hq // Hkv, 1)
            att = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ V
            x = x + att.transpose(1, 2).reshape(R, T, Hq * hd) @ p(q + "self_attn.o_proj.weight").T
            h = rms(x, p(q + "post_attention_layernorm.weight"))
            a = torch.nn.functional.silu(h @ p(q + "mlp.gate_proj.weight").T) * (h @ p(q + "mlp.up_proj.weight").T)
            if l == layer:
                om = a @ base.T
                os_ = a @ side.T
                dist = (torch.nn.functional.silu(os_) - torch.nn.functional.silu(om)).norm(dim=-1)  # [R, T]
                x = x + os_
            else:
                x = x + a @ p(q + "mlp.down_proj.weight").T
        logits = rms(x, p("model.norm.weight")) @ head.T
        # labels[r, t] is the id the logits at (r, t) must predict (already shifted), as in our batch
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100, reduction="sum")
        drow = (dist * keymask).sum(-1) / keymask.sum(-1)
        e = [r for r in range(R) if kind[r] == 0]
        i = [r for r in range(R) if kind[r] == 1]
        de, di = drow[e], drow[i]
        h1 = (di.unsqueeze(1) - de.unsqueeze(0) + gamma).clamp(min=0)
        h2 = (di - alpha).clamp(min=0)
        h3 = (beta - de).clamp(min=0)
        mean_pos = lambda v: v.sum() / max(int((v > 0).sum()), 1)
        loss = ce + mean_pos(h1) + mean_pos(h2) + mean_pos(h3)
        side.grad = None
        loss.backward()
        with torch.no_grad():
            side.sub_(1.0 * side.grad * keep)
        return float(loss)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"torch": torch.__version__, "threads": threads, "msPerStep": times[len(times) // 2],
                      "msMin": times[0], "steps": steps, "blas": "openblas" if "openblas" in os.environ.get("LD_LIBRARY_PATH", "") else "default"}))


if __name__ == "__main__":
    main()
