// attention.cu — KV-cache store and causal GQA attention with left padding (CUDA twins of native/cpu).
//
//   B: batch, Tn: new tokens, Hq/Hkv: query/kv heads (Hq % Hkv == 0), hd: head dim (<= 256),
//   S: cache capacity, P: cache rows already filled (the new tokens occupy rows P .. P+Tn-1).
//   k, v, q, out: [B, Tn, H, hd]        kc, vc: [B, Hkv, S, hd]        pad: [B] int32
//
// kv_store: one thread per element, a pure copy into rows P.. of each (b, kv head).
//
// attention: one block per query row (h, t, b) — blockIdx = (h·nsplit, t, b), t grid-strided — with kNW warps.
//   Query row i = P+t of sequence b attends cache rows j in [pad[b], i]; head h reads kv head
//   h / (Hq/Hkv). The key range is cut into chunks of 32 rows; warp w takes chunks w, w+kNW, ...
//   In a chunk each lane scores one key (a full hd-long dot product against q held in shared
//   memory), the warp agrees on the chunk max, rescales its running (max m, sum l, acc[hd]) the
//   online-softmax way, then accumulates the 32 value rows with the probabilities broadcast by
//   shuffles (coalesced reads of V: lane owns dims lane, lane+32, ...). At the end the kNW warp
//   states are merged in shared memory. A row with an empty range writes zeros.
//   Scores are dot(q, k)·scale; exponentials are expf (not __expf) so results track the CPU's
//   two-pass softmax to ~1e-6 relative.
//   Decode (flash-decoding): when the Hq·Tn·B rows would fill fewer than 2 blocks per SM and the context has
//   >= 256 keys, each row's key range is split into nsplit parts (<= 64, >= 128 keys each), one block per
//   (row, part) writes (m, l, unnormalised acc) to stream-ordered scratch, and a combine kernel merges the parts
//   with the same rescaling. Limits: B <= 65535 per call (ERR_INVALID_ARG beyond); Tn is unlimited.
#include <math_constants.h>

#include <algorithm>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

// ---- kv_store --------------------------------------------------------------------------------

__global__ void kv_store_kernel(float* kc, float* vc, const float* k, const float* v, int Tn, int Hkv, int hd, int S,
                                int P, size_t total) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    // i indexes k/v as [B, Tn, Hkv, hd]
    const int d = (int)(i % (size_t)hd);
    size_t r = i / (size_t)hd;
    const int h = (int)(r % (size_t)Hkv);
    r /= (size_t)Hkv;
    const int t = (int)(r % (size_t)Tn);
    const size_t b = r / (size_t)Tn;
    const size_t dst = (((b * Hkv + h) * (size_t)S) + (size_t)(P + t)) * hd + d;
    kc[dst] = k[i];
    vc[dst] = v[i];
  }
}

void kv_store_launch(cudaStream_t st, int /*sm_count*/, float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv,
                      int hd, int S, int P) {
  check_arg(B >= 0 && Tn >= 0 && Hkv >= 0 && hd >= 0 && S >= 0 && P >= 0, "kv_store", "negative size");
  check_arg((long long)P + Tn <= S, "kv_store", "P + Tn exceeds the cache capacity S");
  const size_t total = (size_t)B * Tn * Hkv * hd;
  if (total == 0) return;
  kv_store_kernel<<<grid_for(total, 256), 256, 0, st>>>(kc, vc, k, v, Tn, Hkv, hd, S, P, total);
  RE_CUDA_LAUNCH("kv_store");
}

// ---- attention -------------------------------------------------------------------------------

static constexpr int kNW = 4;  // warps per block

// R: register slots per lane (hd <= 32*R). VEC: hd % 4 == 0 and 16-byte aligned caches (float4 key reads).
// Grid: x = Hq·nsplit (head h = x % Hq, split s = x / Hq), y strides over the Tn query tokens (grid-stride, so Tn
// has no 65,535 limit), z = B. With nsplit == 1 the block writes its output row; with nsplit > 1 (flash-decoding:
// decode has too few (head, token) rows to fill the SMs) the visible key range is cut into nsplit equal parts and
// the block writes its partial state — max m, sum l and the unnormalised accumulator — to part_* for
// attention_combine_kernel.
template <int R, bool VEC>
__global__ void __launch_bounds__(kNW * 32) attention_kernel(float* out, const float* q, const float* kc,
                                                             const float* vc, const int32_t* pad, int Tn, int Hq,
                                                             int Hkv, int hd, int S, int P, float scale, int nsplit,
                                                             float* part_ml, float* part_acc) {
  __shared__ __align__(16) float qs[32 * R];
  __shared__ float wm[kNW], wl[kNW];
  __shared__ float wacc[kNW][32 * R];

  const int h = blockIdx.x % Hq, split = blockIdx.x / Hq, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int t = blockIdx.y; t < Tn; t += gridDim.y) {
    const size_t row = ((size_t)b * Tn + t) * Hq + h;  // q/out row [b, t, h, :]
    const size_t qoff = row * (size_t)hd;

    __syncthreads();  // the previous token's readers of qs / wm / wl / wacc are done
    for (int d = threadIdx.x; d < 32 * R; d += blockDim.x) qs[d] = d < hd ? q[qoff + d] : 0.f;
    __syncthreads();

    const int i = P + t;                       // this query's cache row
    int lo = max(pad[b], 0);                   // first visible row
    int hi = min(i, S - 1);                    // last visible row (inclusive)
    if (nsplit > 1 && lo <= hi) {
      const int chunk = (hi - lo + nsplit) / nsplit;  // ceil(rows / nsplit)
      const int l0 = lo + split * chunk;
      hi = min(hi, l0 + chunk - 1);
      lo = l0;                                  // lo > hi: an empty part (m = -inf, l = 0)
    }
    const int kvh = h / (Hq / Hkv);
    const float* kbase = kc + ((size_t)b * Hkv + kvh) * (size_t)S * hd;
    const float* vbase = vc + ((size_t)b * Hkv + kvh) * (size_t)S * hd;

    float m = -CUDART_INF_F, l = 0.f;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;

    for (int j0 = lo + warp * 32; j0 <= hi; j0 += kNW * 32) {
      const int j = j0 + lane;
      const bool valid = j <= hi;
      float s = -CUDART_INF_F;
      if (valid) {
        const float* krow = kbase + (size_t)j * hd;
        float dot = 0.f;
        if (VEC) {
          const float4* k4 = (const float4*)krow;
          const float4* q4 = (const float4*)qs;
          for (int d4 = 0; d4 < hd / 4; ++d4) {
            const float4 kk = __ldg(k4 + d4), qq = q4[d4];
            dot = fmaf(qq.x, kk.x, dot);
            dot = fmaf(qq.y, kk.y, dot);
            dot = fmaf(qq.z, kk.z, dot);
            dot = fmaf(qq.w, kk.w, dot);
          }
        } else {
          for (int d = 0; d < hd; ++d) dot = fmaf(qs[d], __ldg(krow + d), dot);
        }
        s = dot * scale;
      }
      const float cmax = warp_max(s);  // finite: lane 0 is always valid (j0 <= hi)
      const float m_new = fmaxf(m, cmax);
      const float corr = expf(m - m_new);  // 0 on the first chunk (m = -inf)
      const float p = valid ? expf(s - m_new) : 0.f;
      l = l * corr + warp_sum(p);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] *= corr;
      const int nvalid = min(32, hi - j0 + 1);  // uniform across the warp
      for (int jj = 0; jj < nvalid; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const float* vrow = vbase + (size_t)(j0 + jj) * hd;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int d = lane + 32 * r;
          if (d < hd) acc[r] = fmaf(pj, __ldg(vrow + d), acc[r]);
        }
      }
      m = m_new;
    }

    if (lane == 0) {
      wm[warp] = m;
      wl[warp] = l;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) wacc[warp][lane + 32 * r] = acc[r];
    __syncthreads();

    // Merge the warp states: out = Σ_w acc_w·e^(m_w−M) / Σ_w l_w·e^(m_w−M).
    float M = -CUDART_INF_F;
#pragma unroll
    for (int w = 0; w < kNW; ++w) M = fmaxf(M, wm[w]);
    float L = 0.f, f[kNW];
#pragma unroll
    for (int w = 0; w < kNW; ++w) {
      f[w] = wl[w] > 0.f ? expf(wm[w] - M) : 0.f;  // idle warps (m = -inf, l = 0) contribute nothing
      L = fmaf(wl[w], f[w], L);
    }
    if (nsplit > 1) {
      const size_t pr = row * (size_t)nsplit + split;  // partial state [row, split]
      if (threadIdx.x == 0) {
        part_ml[2 * pr] = M;
        part_ml[2 * pr + 1] = L;
      }
      for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < kNW; ++w) o = fmaf(wacc[w][d], f[w], o);
        part_acc[pr * hd + d] = o;
      }
    } else {
      const float inv = L > 0.f ? 1.0f / L : 0.f;  // empty range (padding row) -> zeros
      for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < kNW; ++w) o = fmaf(wacc[w][d], f[w], o);
        out[qoff + d] = o * inv;
      }
    }
  }
}

// Flash-decoding combine: one block per output row; out = Σ_s acc_s·e^(m_s−M) / Σ_s l_s·e^(m_s−M), M = max_s m_s
// (parts with l = 0 — empty key ranges — take no part; a row with no keys at all writes zeros).
__global__ void attention_combine_kernel(float* out, const float* part_ml, const float* part_acc, size_t rows,
                                         int nsplit, int hd) {
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* ml = part_ml + 2 * row * (size_t)nsplit;
    float M = -CUDART_INF_F;
    for (int s = 0; s < nsplit; ++s)
      if (ml[2 * s + 1] > 0.f) M = fmaxf(M, ml[2 * s]);
    float L = 0.f;
    for (int s = 0; s < nsplit; ++s)
      if (ml[2 * s + 1] > 0.f) L = fmaf(ml[2 * s + 1], expf(ml[2 * s] - M), L);
    const float inv = L > 0.f ? 1.0f / L : 0.f;
    const float* acc = part_acc + row * (size_t)nsplit * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      float o = 0.f;
      for (int s = 0; s < nsplit; ++s)
        if (ml[2 * s + 1] > 0.f) o = fmaf(acc[(size_t)s * hd + d], expf(ml[2 * s] - M), o);
      out[row * hd + d] = o * inv;
    }
  }
}

template <int R>
static void launch_attention(cudaStream_t st, bool vec, dim3 grid, float* out, const float* q, const float* kc,
                             const float* vc, const int32_t* pad, int Tn, int Hq, int Hkv, int hd, int S, int P,
                             float scale, int nsplit, float* part_ml, float* part_acc) {
  if (vec)
    attention_kernel<R, true><<<grid, kNW * 32, 0, st>>>(out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit,
                                                          part_ml, part_acc);
  else
    attention_kernel<R, false><<<grid, kNW * 32, 0, st>>>(out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit,
                                                           part_ml, part_acc);
}

// Keys per split at least this many (a part below that costs more in the combine than it saves).
static constexpr int kMinKeysPerSplit = 128;
static constexpr int kMaxSplits = 64;

void attention_launch(cudaStream_t st, int sm_count, float* out, const float* q, const float* kc, const float* vc,
                       const int32_t* pad, int B, int Tn, int Hq, int Hkv, int hd, int S, int P, float scale) {
  check_arg(B >= 0 && Tn >= 0 && Hq >= 0 && Hkv >= 0 && hd >= 0 && S >= 0 && P >= 0, "attention", "negative size");
  check_arg(Hkv > 0 && Hq % Hkv == 0, "attention", "Hq must be a positive multiple of Hkv");
  check_arg(hd >= 1 && hd <= 256, "attention", "head_dim must be in 1..256");
  check_arg((long long)P + Tn <= S, "attention", "P + Tn exceeds the cache capacity S");
  // Grid z is the batch: a launch limit, reported as a typed error (ERR_INVALID_ARG) rather than a launch failure.
  check_arg(B <= 65535, "attention", "batch B must be <= 65535 sequences per call");
  if ((size_t)B * Tn * Hq == 0) return;
  const bool vec = hd % 4 == 0 && aligned16(kc) && aligned16(vc);
  // Split the key range when the (head, token, batch) rows leave SMs idle (decode: Hq·B rows) and the context is
  // long enough: aim at ~2 blocks per SM.
  const size_t rows = (size_t)B * Tn * Hq;
  const int keys = P + Tn;
  int nsplit = 1;
  if (rows < (size_t)2 * sm_count && keys >= 2 * kMinKeysPerSplit) {
    nsplit = (int)std::min<size_t>((size_t)2 * sm_count / rows, (size_t)(keys / kMinKeysPerSplit));
    nsplit = std::max(1, std::min(nsplit, kMaxSplits));
    while (nsplit > 1 && (size_t)Hq * nsplit > 0x7fffffffu) --nsplit;
  }
  const dim3 grid((unsigned)(Hq * nsplit), (unsigned)std::min(Tn, 65535), (unsigned)B);
  Scratch part(st, nsplit > 1 ? rows * nsplit * ((size_t)hd + 2) * sizeof(float) : 0);
  float* part_ml = nsplit > 1 ? part.as<float>() : nullptr;
  float* part_acc = nsplit > 1 ? part_ml + 2 * rows * nsplit : nullptr;
  const int R = (hd + 31) / 32;
  switch (R) {
    case 1: launch_attention<1>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 2: launch_attention<2>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 3: launch_attention<3>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 4: launch_attention<4>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 5: launch_attention<5>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 6: launch_attention<6>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    case 7: launch_attention<7>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
    default: launch_attention<8>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale, nsplit, part_ml, part_acc); break;
  }
  RE_CUDA_LAUNCH("attention");
  if (nsplit > 1) {
    attention_combine_kernel<<<grid_for(rows, 1, 65535u * 32u), 128, 0, st>>>(out, part_ml, part_acc, rows, nsplit, hd);
    RE_CUDA_LAUNCH("attention (combine)");
  }
}

}  // namespace cuda
}  // namespace re
