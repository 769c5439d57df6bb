// ref64.ts — a float64 reference of the Llama-family forward (HF conventions) and of the editing loss of
// native/edit.cpp, used by test/grad.test.ts for finite-difference checks of the native edit gradient.
//
// Forward: RMSNorm (w · x/√(mean x² + eps)), RoPE rotate_half with the model's inv_freq, GQA causal
// attention, SwiGLU MLP, final norm, lm_head (or the tied embedding), optional q/k/v bias. Left padding
// is handled by running each row on its valid tokens only (positions 0..n−1): with pad keys masked and
// positions restarting at the first real token, that is exactly what a padded batch must compute.
//
// GPT-2 (config arch 'gpt2'): LayerNorm with bias, learned positions added to the token embeddings, no
// RoPE, MHA, biases on q/k/v/o and on the MLP's c_fc / c_proj, gelu_new, ln_f, tied head. The Conv1D
// weights ([in, out] on disk) are transposed here into the nn.Linear [out, in] layout the runtime uses,
// so the edited value matrix (mlp.c_proj) is [D, F] like Llama's down_proj and o_side = A·W'ᵀ + b.
//
// The edited layer L's down_proj is replaced by W' (row-major [D, F]). With target 'key' (GPT-2 only) the
// edited matrix is c_fc instead, W' [F, D]: o_side = ln_2(h)·W'ᵀ + b_fc, the FFN output c_proj(gelu(o_side)),
// and the routing distance compares φ(o_side) with φ(o_main) over F dimensions. The prefix (everything up to
// layer L's FFN activation A and the residual hL entering its output add) does not depend on W' and is
// computed once by prepare(); loss(W') then runs o_side = A·W'ᵀ, the suffix layers and the head.
import { closeSync, openSync, readSync } from 'node:fs';
import { readConfig } from '../../lib/config.js';
import { readSafetensorsDir } from '../../lib/safetensors.js';

export interface Ref64Weights {
  gpt2: boolean;
  D: number;
  F: number;
  nL: number;
  Hq: number;
  Hkv: number;
  hd: number;
  V: number;
  eps: number;
  invFreq: Float64Array;
  embed: Float64Array; // [V, D]
  lmHead: Float64Array; // [V, D] (the embedding when tied)
  norm: Float64Array;
  normB?: Float64Array; // gpt2: ln_f.bias
  wpe?: Float64Array; // gpt2: [n_positions, D]
  layers: {
    ln1: Float64Array;
    ln2: Float64Array;
    q: Float64Array;
    k: Float64Array;
    v: Float64Array;
    qb?: Float64Array;
    kb?: Float64Array;
    vb?: Float64Array;
    o: Float64Array;
    gate: Float64Array;
    up: Float64Array;
    down: Float64Array;
    // gpt2 only
    ln1b?: Float64Array;
    ln2b?: Float64Array;
    ob?: Float64Array;
    upb?: Float64Array;
    downb?: Float64Array;
  }[];
}

/** [R, C] -> [C, R]. */
function transpose(a: Float64Array, R: number, C: number): Float64Array {
  const out = new Float64Array(a.length);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[c * R + r] = a[r * C + c]!;
  return out;
}

function bf16ToF32(h: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setUint32(0, h << 16, true);
  return b.getFloat32(0, true);
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Read every tensor of a model folder as float64 (F32 / F16 / BF16 sources). */
export function loadRef64(dir: string): Ref64Weights {
  const cfg = readConfig(dir);
  const tensors = readSafetensorsDir(dir);
  const get = (name: string): Float64Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`ref64: missing tensor ${name}`);
    const fd = openSync(t.file, 'r');
    const buf = Buffer.alloc(t.nbytes);
    try {
      readSync(fd, buf, 0, t.nbytes, t.offset);
    } finally {
      closeSync(fd);
    }
    const n = t.shape.reduce((a, b) => a * b, 1);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      if (t.dtype === 'F32') out[i] = buf.readFloatLE(i * 4);
      else if (t.dtype === 'BF16') out[i] = bf16ToF32(buf.readUInt16LE(i * 2));
      else if (t.dtype === 'F16') out[i] = f16ToF32(buf.readUInt16LE(i * 2));
      else throw new Error(`ref64: dtype ${t.dtype}`);
    }
    return out;
  };
  const layers: Ref64Weights['layers'] = [];
  if (cfg.arch === 'gpt2') {
    const D = cfg.hiddenSize;
    const F = cfg.intermediateSize;
    const pre = tensors.has('wte.weight') ? '' : 'transformer.';
    const g = (n: string): Float64Array => get(pre + n);
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `h.${l}.`;
      const qkv = transpose(g(`${p}attn.c_attn.weight`), D, 3 * D); // [3D, D]: q | k | v
      const qkvb = g(`${p}attn.c_attn.bias`);
      layers.push({
        ln1: g(`${p}ln_1.weight`),
        ln1b: g(`${p}ln_1.bias`),
        ln2: g(`${p}ln_2.weight`),
        ln2b: g(`${p}ln_2.bias`),
        q: qkv.slice(0, D * D),
        k: qkv.slice(D * D, 2 * D * D),
        v: qkv.slice(2 * D * D),
        qb: qkvb.slice(0, D),
        kb: qkvb.slice(D, 2 * D),
        vb: qkvb.slice(2 * D),
        o: transpose(g(`${p}attn.c_proj.weight`), D, D),
        ob: g(`${p}attn.c_proj.bias`),
        gate: new Float64Array(0),
        up: transpose(g(`${p}mlp.c_fc.weight`), D, F),
        upb: g(`${p}mlp.c_fc.bias`),
        down: transpose(g(`${p}mlp.c_proj.weight`), F, D),
        downb: g(`${p}mlp.c_proj.bias`),
      });
    }
    const wte = g('wte.weight');
    return {
      gpt2: true,
      D,
      F,
      nL: cfg.numLayers,
      Hq: cfg.numHeads,
      Hkv: cfg.numKvHeads,
      hd: cfg.headDim,
      V: cfg.vocabSize,
      eps: cfg.rmsNormEps,
      invFreq: new Float64Array(0),
      embed: wte,
      lmHead: wte,
      norm: g('ln_f.weight'),
      normB: g('ln_f.bias'),
      wpe: g('wpe.weight'),
      layers,
    };
  }
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      ln1: get(`${p}input_layernorm.weight`),
      ln2: get(`${p}post_attention_layernorm.weight`),
      q: get(`${p}self_attn.q_proj.weight`),
      k: get(`${p}self_attn.k_proj.weight`),
      v: get(`${p}self_attn.v_proj.weight`),
      qb: cfg.qkvBias ? get(`${p}self_attn.q_proj.bias`) : undefined,
      kb: cfg.qkvBias ? get(`${p}self_attn.k_proj.bias`) : undefined,
      vb: cfg.qkvBias ? get(`${p}self_attn.v_proj.bias`) : undefined,
      o: get(`${p}self_attn.o_proj.weight`),
      gate: get(`${p}mlp.gate_proj.weight`),
      up: get(`${p}mlp.up_proj.weight`),
      down: get(`${p}mlp.down_proj.weight`),
    });
  }
  const embed = get('model.embed_tokens.weight');
  return {
    gpt2: false,
    D: cfg.hiddenSize,
    F: cfg.intermediateSize,
    nL: cfg.numLayers,
    Hq: cfg.numHeads,
    Hkv: cfg.numKvHeads,
    hd: cfg.headDim,
    V: cfg.vocabSize,
    eps: cfg.rmsNormEps,
    invFreq: Float64Array.from(cfg.invFreq), // the model's (f32-rounded) inverse frequencies, as the runtime uses
    embed,
    lmHead: cfg.tieEmbeddings ? embed : get('lm_head.weight'),
    norm: get('model.norm.weight'),
    layers,
  };
}

// ---- primitives (row-major) ----
/** y[n, N] = x[n, K]·W[N, K]ᵀ (+ b). */
function linear(x: Float64Array, n: number, K: number, W: Float64Array, N: number, b?: Float64Array): Float64Array {
  const y = new Float64Array(n * N);
  for (let t = 0; t < n; t++) {
    const xo = t * K;
    for (let o = 0; o < N; o++) {
      const wo = o * K;
      let s = b ? b[o]! : 0;
      for (let k = 0; k < K; k++) s += x[xo + k]! * W[wo + k]!;
      y[t * N + o] = s;
    }
  }
  return y;
}

function rmsnorm(x: Float64Array, n: number, D: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(n * D);
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i]! ** 2;
    const r = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) y[t * D + i] = w[i]! * (x[t * D + i]! * r);
  }
  return y;
}

/** LayerNorm with bias (biased variance), the eps rounded to f32 as the runtime receives it. */
function layernorm(x: Float64Array, n: number, D: number, w: Float64Array, b: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(n * D);
  const e = Math.fround(eps);
  for (let t = 0; t < n; t++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += x[t * D + i]!;
    const mu = s / D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += (x[t * D + i]! - mu) ** 2;
    const r = 1 / Math.sqrt(ss / D + e);
    for (let i = 0; i < D; i++) y[t * D + i] = (x[t * D + i]! - mu) * r * w[i]! + b[i]!;
  }
  return y;
}

/** The model's norm: RMSNorm (Llama family) or LayerNorm with bias (GPT-2). */
function norm(m: Ref64Weights, x: Float64Array, n: number, w: Float64Array, b: Float64Array | undefined): Float64Array {
  return m.gpt2 ? layernorm(x, n, m.D, w, b!, m.eps) : rmsnorm(x, n, m.D, w, m.eps);
}

const silu = (z: number): number => z / (1 + Math.exp(-z));
const gelu = (z: number): number => 0.5 * z * (1 + Math.tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)));

/** In place: HF rotate_half RoPE on [n, H, hd], position of token t = t. */
function rope(x: Float64Array, n: number, H: number, hd: number, invFreq: Float64Array): void {
  const half = hd / 2;
  for (let t = 0; t < n; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const ang = t * invFreq[i]!;
        const c = Math.cos(ang);
        const s = Math.sin(ang);
        const a = x[o + i]!;
        const b = x[o + i + half]!;
        x[o + i] = a * c - b * s;
        x[o + i + half] = b * c + a * s;
      }
    }
}

function attnBlock(m: Ref64Weights, l: number, x: Float64Array, n: number): void {
  const { D, Hq, Hkv, hd } = m;
  const w = m.layers[l]!;
  const xn = norm(m, x, n, w.ln1, w.ln1b);
  const q = linear(xn, n, D, w.q, Hq * hd, w.qb);
  const k = linear(xn, n, D, w.k, Hkv * hd, w.kb);
  const v = linear(xn, n, D, w.v, Hkv * hd, w.vb);
  if (!m.gpt2) {
    rope(q, n, Hq, hd, m.invFreq);
    rope(k, n, Hkv, hd, m.invFreq);
  }
  const att = new Float64Array(n * Hq * hd);
  const scale = 1 / Math.sqrt(hd);
  const group = Hq / Hkv;
  const p = new Float64Array(n);
  for (let h = 0; h < Hq; h++) {
    const kh = Math.floor(h / group);
    for (let t = 0; t < n; t++) {
      let mx = -Infinity;
      for (let s = 0; s <= t; s++) {
        let dot = 0;
        for (let i = 0; i < hd; i++) dot += q[(t * Hq + h) * hd + i]! * k[(s * Hkv + kh) * hd + i]!;
        p[s] = dot * scale;
        mx = Math.max(mx, p[s]!);
      }
      let den = 0;
      for (let s = 0; s <= t; s++) den += p[s] = Math.exp(p[s]! - mx);
      for (let s = 0; s <= t; s++) {
        const ps = p[s]! / den;
        for (let i = 0; i < hd; i++) att[(t * Hq + h) * hd + i]! += ps * v[(s * Hkv + kh) * hd + i]!;
      }
    }
  }
  const o = linear(att, n, Hq * hd, w.o, D, w.ob);
  for (let i = 0; i < n * D; i++) x[i]! += o[i]!;
}

/** The FFN activation A [n, F]: silu(gate(norm2(x))) ⊙ up(norm2(x)), or gelu(c_fc(ln_2(x))) for GPT-2. */
function mlpAct(m: Ref64Weights, l: number, x: Float64Array, n: number): Float64Array {
  const w = m.layers[l]!;
  if (m.gpt2) {
    const a = linear(norm(m, x, n, w.ln2, w.ln2b), n, m.D, w.up, m.F, w.upb);
    for (let i = 0; i < n * m.F; i++) a[i] = gelu(a[i]!);
    return a;
  }
  const xn = rmsnorm(x, n, m.D, w.ln2, m.eps);
  const g = linear(xn, n, m.D, w.gate, m.F);
  const u = linear(xn, n, m.D, w.up, m.F);
  for (let i = 0; i < n * m.F; i++) g[i] = silu(g[i]!) * u[i]!;
  return g;
}

// ---- the edit batch and loss (native/edit.cpp) ----
export interface EditRows {
  tokens: Int32Array; // [R*T], left-padded
  R: number;
  T: number;
  pad: Int32Array;
  labels: Int32Array; // [R*T], -1 = none
  labelWeights: Float32Array;
  kind: Int32Array; // 0 edit, 1 irrelevant
}

export interface MarginHyper {
  margin: boolean;
  alpha: number;
  beta: number;
  gamma: number;
  act: 0 | 1 | 2;
}

interface RowCache {
  n: number; // valid tokens
  A: Float64Array; // [n, F] (key: [n, D], the normed MLP input)
  hL: Float64Array; // [n, D]
  om: Float64Array; // [n, D] = A·W_vᵀ (+ b for GPT-2)
  labels: { t: number; id: number; w: number }[]; // t within the unpadded row
}

/** REPAIR intra-batch distillation (Eq. 4) as native/edit.cpp runs it over the batch's samples. */
export interface KdHyper {
  /** Sample id of each row (edit rows: 0..S−1; irrelevant rows: −1). */
  sample: Int32Array;
  weight: number; // λ_KD
  lambda: number; // λ (cosine term)
  theta: number; // ϑ (variance term)
  /** T of the logit KL (0 = off). */
  temperature: number;
  /**
   * The teacher (sample 0) is a stop-gradient: its features and logits are taken at this W' (the point
   * the gradient is checked at), so finite differences see only the students' dependence, as the native
   * backward does. Absent: the teacher moves with W' too.
   */
  teacherAt?: Float64Array;
}

export interface LossParts {
  loss: number;
  ce: number;
  h1: number;
  h2: number;
  h3: number;
  /** Number of strictly positive entries of each hinge. */
  pos: [number, number, number];
  drow: number[]; // per-row mean distance over valid tokens
  /** L_KD (cosine + variance + logit KL), 0 without kd. */
  kd: number;
  /** Its logit-KL part. */
  kl: number;
}

export class EditLoss64 {
  private rows: RowCache[] = [];
  constructor(
    readonly m: Ref64Weights,
    readonly L: number,
    readonly batch: EditRows,
    readonly target: 'value' | 'key' = 'value',
  ) {
    const { R, T } = batch;
    for (let r = 0; r < R; r++) {
      const pad = batch.pad[r]!;
      const n = T - pad;
      const ids = Array.from(batch.tokens.subarray(r * T + pad, (r + 1) * T));
      const x = new Float64Array(n * m.D);
      ids.forEach((id, t) => x.set(m.embed.subarray(id * m.D, (id + 1) * m.D), t * m.D));
      if (m.wpe) for (let i = 0; i < n * m.D; i++) x[i]! += m.wpe[i]!; // positions 0..n-1 of the unpadded row
      for (let l = 0; l < L; l++) {
        attnBlock(m, l, x, n);
        const a = mlpAct(m, l, x, n);
        const o = linear(a, n, m.F, m.layers[l]!.down, m.D, m.layers[l]!.downb);
        for (let i = 0; i < n * m.D; i++) x[i]! += o[i]!;
      }
      attnBlock(m, L, x, n);
      const wL = m.layers[L]!;
      const A = target === 'key' ? norm(m, x, n, wL.ln2, wL.ln2b) : mlpAct(m, L, x, n);
      const om = target === 'key' ? linear(A, n, m.D, wL.up, m.F, wL.upb) : linear(A, n, m.F, wL.down, m.D, wL.downb);
      const labels: RowCache['labels'] = [];
      for (let t = pad; t < T; t++) {
        const id = batch.labels[r * T + t]!;
        if (id >= 0) labels.push({ t: t - pad, id, w: batch.labelWeights[r * T + t]! });
      }
      this.rows.push({ n, A, hL: x, om, labels });
    }
  }

  /** The per-token distances d[t] = ‖φ(o_side) − φ(o_main)‖ of every row (valid tokens only). */
  private dist(os: Float64Array, om: Float64Array, n: number, act: 0 | 1 | 2): Float64Array {
    const D = this.target === 'key' ? this.m.F : this.m.D;
    const phi = act === 1 ? silu : act === 2 ? gelu : (z: number): number => z;
    const d = new Float64Array(n);
    for (let t = 0; t < n; t++) {
      let ss = 0;
      for (let i = 0; i < D; i++) ss += (phi(os[t * D + i]!) - phi(om[t * D + i]!)) ** 2;
      d[t] = Math.sqrt(ss);
    }
    return d;
  }

  /**
   * Every row at W': its side output o_side [n, N] and, for rows with labels, the logits at the label
   * positions [labels, V] (empty otherwise), plus the weighted CE.
   */
  private forward(Wp: Float64Array): { ce: number; rowOs: Float64Array[]; rowLogits: Float64Array[] } {
    const { m, L } = this;
    const { D, F, V } = m;
    let ce = 0;
    const rowOs: Float64Array[] = [];
    const rowLogits: Float64Array[] = [];
    for (const row of this.rows) {
      const { n } = row;
      const wL = m.layers[L]!;
      const key = this.target === 'key';
      // GPT-2: the matrix's bias on the side output too
      const os = key ? linear(row.A, n, D, Wp, F, wL.upb) : linear(row.A, n, F, Wp, D, wL.downb);
      rowOs.push(os);
      rowLogits.push(new Float64Array(0));
      if (row.labels.length === 0) continue;
      const x = new Float64Array(n * D);
      const out = key ? linear(Float64Array.from(os, gelu), n, F, wL.down, D, wL.downb) : os;
      for (let i = 0; i < n * D; i++) x[i] = row.hL[i]! + out[i]!;
      for (let l = L + 1; l < m.nL; l++) {
        attnBlock(m, l, x, n);
        const a = mlpAct(m, l, x, n);
        const o = linear(a, n, F, m.layers[l]!.down, D, m.layers[l]!.downb);
        for (let i = 0; i < n * D; i++) x[i]! += o[i]!;
      }
      const rowsX = new Float64Array(row.labels.length * D);
      row.labels.forEach((lb, i) => rowsX.set(x.subarray(lb.t * D, (lb.t + 1) * D), i * D));
      const hn = norm(m, rowsX, row.labels.length, m.norm, m.normB);
      const logits = linear(hn, row.labels.length, D, m.lmHead, V);
      rowLogits[rowLogits.length - 1] = logits;
      row.labels.forEach((lb, i) => {
        const z = logits.subarray(i * V, (i + 1) * V);
        let mx = -Infinity;
        for (const v of z) mx = Math.max(mx, v);
        let den = 0;
        for (const v of z) den += Math.exp(v - mx);
        ce += lb.w * (mx + Math.log(den) - z[lb.id]!);
      });
    }
    return { ce, rowOs, rowLogits };
  }

  /** The edit loss at W' ([D, F] row-major, float64), with L_KD when `kd` is given. */
  loss(Wp: Float64Array, h: MarginHyper, kd?: KdHyper): LossParts {
    const { ce, rowOs, rowLogits } = this.forward(Wp);
    const drow = h.margin ? this.rows.map((row, r) => this.dist(rowOs[r]!, row.om, row.n, h.act).reduce((a, b) => a + b, 0) / row.n) : [];
    let h1 = 0;
    let h2 = 0;
    let h3 = 0;
    const pos: [number, number, number] = [0, 0, 0];
    if (h.margin) {
      const kind = this.batch.kind;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let r = 0; r < drow.length; r++) {
        if (kind[r] === 1) {
          const v2 = drow[r]! - h.alpha;
          if (v2 > 0) (s2 += v2), pos[1]++;
          for (let e = 0; e < drow.length; e++) {
            if (kind[e] !== 0) continue;
            const v1 = drow[r]! - drow[e]! + h.gamma;
            if (v1 > 0) (s1 += v1), pos[0]++;
          }
        } else {
          const v3 = h.beta - drow[r]!;
          if (v3 > 0) (s3 += v3), pos[2]++;
        }
      }
      h1 = pos[0] ? s1 / pos[0] : 0;
      h2 = pos[1] ? s2 / pos[1] : 0;
      h3 = pos[2] ? s3 / pos[2] : 0;
    }
    let kdLoss = 0;
    let kl = 0;
    if (kd) {
      const t = kd.teacherAt ? this.forward(kd.teacherAt) : undefined; // the frozen teacher (stop-gradient)
      ({ kd: kdLoss, kl } = this.kdLoss(rowOs, rowLogits, kd, t && { os: t.rowOs, logits: t.rowLogits }));
    }
    return { loss: ce + h1 + h2 + h3 + kdLoss, ce, h1, h2, h3, pos, drow, kd: kdLoss, kl };
  }

  /**
   * L_KD of Eq. 4 over the samples: features f_s = mean of o_side over every valid token of sample s's edit
   * rows; o = f/‖f‖; λ_KD·(λ·mean_{s>=1}(1 − o_s·o_0) + ϑ·(1/S)·Σ‖o_s − ō‖²); plus, when T > 0, the logit KL:
   * the k-th edit row of sample s >= 1 against the k-th of sample 0, answer positions aligned from the
   * first, λ_KD·T²·KL(softmax(z_0/T) ‖ softmax(z_s/T)) averaged over positions, rows and the S − 1 students.
   */
  private kdLoss(rowOsIn: Float64Array[], rowLogitsIn: Float64Array[], kd: KdHyper, teacher?: { os: Float64Array[]; logits: Float64Array[] }): { kd: number; kl: number } {
    const N = this.target === 'key' ? this.m.F : this.m.D;
    const V = this.m.V;
    const S = Math.max(0, ...Array.from(kd.sample)) + 1;
    if (S < 2) return { kd: 0, kl: 0 };
    const rowsOf: number[][] = Array.from({ length: S }, () => []);
    kd.sample.forEach((s, r) => {
      if (s >= 0 && this.batch.kind[r] === 0) rowsOf[s]!.push(r);
    });
    // the teacher's rows from the frozen pass (stop-gradient)
    const rowOs = rowOsIn.map((x, r) => (teacher && kd.sample[r] === 0 ? teacher.os[r]! : x));
    const rowLogits = rowLogitsIn.map((x, r) => (teacher && kd.sample[r] === 0 ? teacher.logits[r]! : x));
    const o: Float64Array[] = rowsOf.map((rows) => {
      const f = new Float64Array(N);
      let cnt = 0;
      for (const r of rows) {
        const n = this.rows[r]!.n;
        cnt += n;
        for (let t = 0; t < n; t++) for (let i = 0; i < N; i++) f[i]! += rowOs[r]![t * N + i]!;
      }
      let ss = 0;
      for (let i = 0; i < N; i++) ss += (f[i]! / cnt) ** 2;
      const nrm = Math.sqrt(ss);
      return Float64Array.from(f, (v) => (nrm > 0 ? v / cnt / nrm : 0));
    });
    let lcos = 0;
    for (let s = 1; s < S; s++) {
      let c = 0;
      for (let i = 0; i < N; i++) c += o[s]![i]! * o[0]![i]!;
      lcos += (1 - c) / (S - 1);
    }
    let lvar = 0;
    for (let i = 0; i < N; i++) {
      let mean = 0;
      for (let s = 0; s < S; s++) mean += o[s]![i]! / S;
      for (let s = 0; s < S; s++) lvar += (o[s]![i]! - mean) ** 2 / S;
    }
    let kl = 0;
    if (kd.temperature > 0) {
      const T = kd.temperature;
      const logSoftmax = (z: Float64Array): Float64Array => {
        let mx = -Infinity;
        for (const v of z) mx = Math.max(mx, v / T);
        let den = 0;
        for (const v of z) den += Math.exp(v / T - mx);
        const lse = mx + Math.log(den);
        return Float64Array.from(z, (v) => v / T - lse);
      };
      for (let s = 1; s < S; s++) {
        const rows = Math.min(rowsOf[s]!.length, rowsOf[0]!.length);
        for (let k = 0; k < rows; k++) {
          const rs = rowsOf[s]![k]!;
          const rt = rowsOf[0]![k]!;
          const m = Math.min(this.rows[rs]!.labels.length, this.rows[rt]!.labels.length);
          for (let j = 0; j < m; j++) {
            const lq = logSoftmax(rowLogits[rs]!.subarray(j * V, (j + 1) * V));
            const lp = logSoftmax(rowLogits[rt]!.subarray(j * V, (j + 1) * V));
            let d = 0;
            for (let v = 0; v < V; v++) d += Math.exp(lp[v]!) * (lp[v]! - lq[v]!);
            kl += (kd.weight * T * T * d) / ((S - 1) * rows * m);
          }
        }
      }
    }
    return { kd: kd.weight * (kd.lambda * lcos + kd.theta * lvar) + kl, kl };
  }
}
