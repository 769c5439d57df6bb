// attention.cu — KV-cache store and causal GQA attention with left padding (CUDA twins of native/cpu).
//
//   B: batch, Tn: new tokens, Hq/Hkv: query/kv heads (Hq % Hkv == 0), hd: head dim (<= 256),
//   S: cache capacity, P: cache rows already filled (the new tokens occupy rows P .. P+Tn-1).
//   k, v, q, out: [B, Tn, H, hd]        kc, vc: [B, Hkv, S, hd]        pad: [B] int32
//
// kv_store: one thread per element, a pure copy into rows P.. of each (b, kv head).
//
// attention: one block per query row (h, t, b) — blockIdx = (h, t, b) — with kNW warps.
//   Query row i = P+t of sequence b attends cache rows j in [pad[b], i]; head h reads kv head
//   h / (Hq/Hkv). The key range is cut into chunks of 32 rows; warp w takes chunks w, w+kNW, ...
//   In a chunk each lane scores one key (a full hd-long dot product against q held in shared
//   memory), the warp agrees on the chunk max, rescales its running (max m, sum l, acc[hd]) the
//   online-softmax way, then accumulates the 32 value rows with the probabilities broadcast by
//   shuffles (coalesced reads of V: lane owns dims lane, lane+32, ...). At the end the kNW warp
//   states are merged in shared memory. A row with an empty range writes zeros.
//   Scores are dot(q, k)·scale; exponentials are expf (not __expf) so results track the CPU's
//   two-pass softmax to ~1e-6 relative.
#include <math_constants.h>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/max, launchers
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

void kv_store_forward(cudaStream_t st, float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv,
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
template <int R, bool VEC>
__global__ void __launch_bounds__(kNW * 32) attention_kernel(float* out, const float* q, const float* kc,
                                                             const float* vc, const int32_t* pad, int Tn, int Hq,
                                                             int Hkv, int hd, int S, int P, float scale) {
  __shared__ __align__(16) float qs[32 * R];
  __shared__ float wm[kNW], wl[kNW];
  __shared__ float wacc[kNW][32 * R];

  const int h = blockIdx.x, t = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t qoff = (((size_t)b * Tn + t) * Hq + h) * (size_t)hd;  // q/out row [b, t, h, :]

  for (int d = threadIdx.x; d < 32 * R; d += blockDim.x) qs[d] = d < hd ? q[qoff + d] : 0.f;
  __syncthreads();

  const int i = P + t;                       // this query's cache row
  const int lo = max(pad[b], 0);             // first visible row
  const int hi = min(i, S - 1);              // last visible row (inclusive)
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
  const float inv = L > 0.f ? 1.0f / L : 0.f;  // empty range (padding row) -> zeros
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kNW; ++w) o = fmaf(wacc[w][d], f[w], o);
    out[qoff + d] = o * inv;
  }
}

template <int R>
static void launch_attention(cudaStream_t st, bool vec, dim3 grid, float* out, const float* q, const float* kc,
                             const float* vc, const int32_t* pad, int Tn, int Hq, int Hkv, int hd, int S, int P,
                             float scale) {
  if (vec)
    attention_kernel<R, true><<<grid, kNW * 32, 0, st>>>(out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale);
  else
    attention_kernel<R, false><<<grid, kNW * 32, 0, st>>>(out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale);
}

void attention_forward(cudaStream_t st, float* out, const float* q, const float* kc, const float* vc,
                       const int32_t* pad, int B, int Tn, int Hq, int Hkv, int hd, int S, int P, float scale) {
  check_arg(B >= 0 && Tn >= 0 && Hq >= 0 && Hkv >= 0 && hd >= 0 && S >= 0 && P >= 0, "attention", "negative size");
  check_arg(Hkv > 0 && Hq % Hkv == 0, "attention", "Hq must be a positive multiple of Hkv");
  check_arg(hd >= 1 && hd <= 256, "attention", "head_dim must be in 1..256");
  check_arg((long long)P + Tn <= S, "attention", "P + Tn exceeds the cache capacity S");
  check_arg(Tn <= 65535 && B <= 65535, "attention", "Tn and B must be <= 65535");
  if ((size_t)B * Tn * Hq == 0) return;
  const bool vec = hd % 4 == 0 && aligned16(kc) && aligned16(vc);
  const dim3 grid((unsigned)Hq, (unsigned)Tn, (unsigned)B);
  const int R = (hd + 31) / 32;
  switch (R) {
    case 1: launch_attention<1>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 2: launch_attention<2>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 3: launch_attention<3>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 4: launch_attention<4>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 5: launch_attention<5>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 6: launch_attention<6>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    case 7: launch_attention<7>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
    default: launch_attention<8>(st, vec, grid, out, q, kc, vc, pad, Tn, Hq, Hkv, hd, S, P, scale); break;
  }
  RE_CUDA_LAUNCH("attention");
}

}  // namespace cuda
}  // namespace re
