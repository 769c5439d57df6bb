// repair.cu — the REPAIR kernels on the GPU (CUDA twins of native/cpu/repair.cpp): the intra-batch
// distillation loss (Eq. 4) with its gradient to the pooled features, the optional logit-KL term of Eq. 4
// (kl_distill), and the loss-aware merge (Alg. 4).
//
//   kd_loss           b rows of D features (b small, D up to ~2·10⁴). Everything is in double, like the CPU,
//                     so the result is the CPU's up to summation order (one f32 rounding at the end):
//                       (1) one block per row: ‖feat_i‖ (double block reduction);
//                       (2) elementwise over e: ō[e] = Σ_i o_i[e]/b in the CPU's order (i ascending);
//                       (3) one block per row: c_i = o_i·o_0, v_i = ‖o_i − ō‖², and go_i = g_i·o_i with
//                           g_i = ca·o_0 + cb·(o_i − ō) (the gradient w.r.t. o_i; ca = −λ/(b−1), cb = 2θ/b,
//                           both formed on the host with the CPU's exact expressions);
//                       (4) one thread: L = λ·mean_{i>=1}(1 − c_i) + θ·Σ_i v_i/b and the per-sample scores;
//                       (5) elementwise over (i, e): dfeat_i = (g_i − go_i·o_i)/‖feat_i‖, row 0 and zero rows 0.
//                     o_i is never stored: it is re-formed as feat/‖feat‖ (double) wherever it is needed.
//   kl_distill        P (student, teacher) row pairs of logits [rows, V] (V up to ~1.5·10⁵). One block of
//                     kKlBlock threads per pair, two passes over the two rows, everything in double like the
//                     CPU (x = z·(1/T) is the CPU's exact expression), so the result is the CPU's up to
//                     summation order and exp's last bit (one f32 rounding per output):
//                       (1) online log-sum-exp of x for both rows: per thread a running (max, Σ exp) pair,
//                           merged over each warp (shuffles), then over the warps by warp 0;
//                       (2) lp = x_t − lse_t, lq = x_s − lse_s, p = exp(lp), q = exp(lq);
//                           KL = Σ p·(lp − lq) (block sum); dlogits[s] += w·T·(q − p), one f32 rounding.
//                     f32 exps (expf of an f32-rounded exponent) were modelled and rejected: near the teacher
//                     (KL ~1e-4, where distillation drives) they cost ~1e-4 relative on the loss, ~1e-5 on the
//                     gradient. Cost at V = 151936: ~100 DP ops per element, ~0.1–0.2 ms per wave of pairs.
//                     Loads are unrolled kKlUnroll deep so one block keeps enough bytes in flight when P is
//                     small (one block per SM). Identical rows give exactly lp == lq (the same arithmetic in
//                     the same order), hence a loss and a gradient of exactly 0.
//   loss_aware_merge  one elementwise kernel: per element the sign test over the non-zero τ_i, the weighted
//                     sum or the value of the shard with the largest w_i·|τ_i| (strict '>' in index order:
//                     ties keep the lower index), in double with explicitly rounded operations (no FMA
//                     contraction) in the CPU's order: bit-identical to the CPU on every base dtype.
//                     Shard pointers and weights are copied to a stream-ordered scratch buffer. `out` may
//                     alias a shard: each thread reads every shard at p before it writes out[p], and no
//                     other thread touches p (shards are therefore read with plain loads, not __ldg).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <math_constants.h>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

namespace {

// Stream-ordered scratch: Scratch in common.cuh (counted in the backend's memory figures).



constexpr int kRowBlock = 256;

// Sum of one double per thread over the block (kRowBlock threads); the result is valid in every thread.
__device__ double block_sum_d(double v, double* part /* [kRowBlock/32] shared */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum_d(v);
  __syncthreads();  // part may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  double t = 0;
#pragma unroll
  for (int w = 0; w < kRowBlock / 32; ++w) t += part[w];
  return t;
}

// ---- kd_loss --------------------------------------------------------------------------------------

// (1) nrm[i] = ‖feat_i‖ (double).
__global__ void __launch_bounds__(kRowBlock) kd_norm_kernel(double* nrm, const float* feat, int D) {
  __shared__ double part[kRowBlock / 32];
  const float* f = feat + (size_t)blockIdx.x * D;
  double ss = 0;
  for (int e = threadIdx.x; e < D; e += kRowBlock) {
    const double x = __ldg(f + e);
    ss += x * x;
  }
  ss = block_sum_d(ss, part);
  if (threadIdx.x == 0) nrm[blockIdx.x] = sqrt(ss);
}

__device__ __forceinline__ double unit(const float* feat, const double* nrm, int i, int D, int e) {
  const double n = nrm[i];
  return n > 0 ? (double)__ldg(feat + (size_t)i * D + e) / n : 0.0;
}

// (2) mean[e] = Σ_i o_i[e] / b, i ascending (the CPU's order).
__global__ void kd_mean_kernel(double* mean, const float* feat, const double* nrm, int b, int D) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < D; e += gridDim.x * blockDim.x) {
    double m = 0;
    for (int i = 0; i < b; ++i) m += unit(feat, nrm, i, D, e) / b;
    mean[e] = m;
  }
}

// (3) per row i: c[i] = o_i·o_0, v[i] = ‖o_i − ō‖², go[i] = g_i·o_i (row 0: c and go unused).
__global__ void __launch_bounds__(kRowBlock)
    kd_row_kernel(double* c, double* v, double* go, const float* feat, const double* nrm, const double* mean, int D,
                  double ca, double cb) {
  __shared__ double part[kRowBlock / 32];
  const int i = blockIdx.x;
  double sc = 0, sv = 0, sg = 0;
  for (int e = threadIdx.x; e < D; e += kRowBlock) {
    const double oi = unit(feat, nrm, i, D, e), o0 = unit(feat, nrm, 0, D, e);
    const double d = oi - mean[e];
    sc += oi * o0;
    sv += d * d;
    sg += (ca * o0 + cb * d) * oi;
  }
  sc = block_sum_d(sc, part);
  sv = block_sum_d(sv, part);
  sg = block_sum_d(sg, part);
  if (threadIdx.x == 0) {
    c[i] = sc;
    v[i] = sv;
    go[i] = sg;
  }
}

// (4) the loss and the per-sample scores (one thread; b is small).
__global__ void kd_loss_kernel(float* out, const double* c, const double* v, int b, float lambda, float theta) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double lcos = 0, lvar = 0;
  out[1] = 0.0f;
  for (int i = 1; i < b; ++i) {
    out[1 + i] = (float)(1.0 - c[i]);
    lcos += (1.0 - c[i]) / (b - 1);
  }
  for (int i = 0; i < b; ++i) lvar += v[i] / b;
  out[0] = (float)((double)lambda * lcos + (double)theta * lvar);
}

// (5) dfeat[i, e] = (g_i[e] − go_i·o_i[e]) / ‖feat_i‖ for i >= 1; row 0 (the teacher) and zero rows get 0.
__global__ void kd_grad_kernel(float* dfeat, const float* feat, const double* nrm, const double* mean,
                               const double* go, int b, int D, double ca, double cb) {
  const size_t total = (size_t)b * D;
  for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < total; q += (size_t)gridDim.x * blockDim.x) {
    const int i = (int)(q / (size_t)D), e = (int)(q % (size_t)D);
    const double n = nrm[i];
    if (i == 0 || !(n > 0)) {
      dfeat[q] = 0.0f;
      continue;
    }
    const double oi = (double)__ldg(feat + q) / n, o0 = unit(feat, nrm, 0, D, e);
    const double g = ca * o0 + cb * (oi - mean[e]);
    dfeat[q] = (float)((g - go[i] * oi) / n);
  }
}

// ---- kl_distill -----------------------------------------------------------------------------------

constexpr int kKlBlock = 512;
constexpr int kKlUnroll = 4;
constexpr int kKlWarps = kKlBlock / 32;
static_assert(kKlWarps <= 32, "the cross-warp merge runs in one warp");

// Adds x to a running log-sum-exp state (m = max so far, s = Σ exp(x − m)); empty: m = −inf, s = 0.
__device__ __forceinline__ void lse_add(double& m, double& s, double x) {
  if (x > m) {
    s = s * exp(m - x) + 1.0;  // rescale (rare); from empty: 0·0 + 1
    m = x;
  } else if (x != -CUDART_INF) {  // −inf adds nothing (and x = m = −inf must not make a NaN); NaN propagates
    s += exp(x - m);
  }
}

// Merges (m2, s2) into (m, s). Symmetric in its two states, so butterfly shuffles leave every lane equal.
__device__ __forceinline__ void lse_merge(double& m, double& s, double m2, double s2) {
  if (m2 > m) {
    const double tm = m, ts = s;
    m = m2;
    s = s2;
    m2 = tm;
    s2 = ts;
  }
  if (s2 > 0) s += s2 * exp(m2 - m);  // an empty state (s2 = 0, m2 = −inf) adds nothing
}

__device__ __forceinline__ void lse_merge_warp(double& m, double& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
}

// One block per pair i:  x = z·(1/T) (the CPU's exact expression);  lse of both rows;
//   lp = x_t − lse_t, lq = x_s − lse_s;  loss[i] = w·T²·Σ p·(lp − lq);  dlogits[s] += w·T·(q − p).
__global__ void __launch_bounds__(kKlBlock, 1)
    kl_distill_kernel(float* loss, float* dlogits, const float* logits, const int32_t* student,
                      const int32_t* teacher, const float* w, int V, double T, double invT) {
  __shared__ double part_m[2][kKlWarps], part_s[2][kKlWarps];
  __shared__ double part_kl[kKlWarps];
  __shared__ double s_lse[2];
  const int i = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const size_t rs = (size_t)student[i], rt = (size_t)teacher[i];
  const float* zs = logits + rs * (size_t)V;  // [V] student row
  const float* zt = logits + rt * (size_t)V;  // [V] teacher row (read only)
  float* g = dlogits + rs * (size_t)V;        // [V] accumulated into

  // (1) log-sum-exp of both rows: per thread, then per warp, then warp 0 over the warps
  double mt = -CUDART_INF, st = 0, ms = -CUDART_INF, ss = 0;
  for (int v0 = threadIdx.x; v0 < V; v0 += kKlBlock * kKlUnroll) {
    float a[kKlUnroll], b[kKlUnroll];
#pragma unroll
    for (int u = 0; u < kKlUnroll; ++u) {  // all loads first: kKlUnroll·2 in flight per thread
      const int v = v0 + u * kKlBlock;
      a[u] = v < V ? __ldg(zt + v) : 0.f;
      b[u] = v < V ? __ldg(zs + v) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kKlUnroll; ++u)
      if (v0 + u * kKlBlock < V) {
        lse_add(mt, st, (double)a[u] * invT);
        lse_add(ms, ss, (double)b[u] * invT);
      }
  }
  lse_merge_warp(mt, st);
  lse_merge_warp(ms, ss);
  if (lane == 0) {
    part_m[0][warp] = mt;
    part_s[0][warp] = st;
    part_m[1][warp] = ms;
    part_s[1][warp] = ss;
  }
  __syncthreads();
  if (warp == 0) {
    mt = lane < kKlWarps ? part_m[0][lane] : -CUDART_INF;
    st = lane < kKlWarps ? part_s[0][lane] : 0.0;
    ms = lane < kKlWarps ? part_m[1][lane] : -CUDART_INF;
    ss = lane < kKlWarps ? part_s[1][lane] : 0.0;
    lse_merge_warp(mt, st);
    lse_merge_warp(ms, ss);
    if (lane == 0) {
      s_lse[0] = mt + log(st);
      s_lse[1] = ms + log(ss);
    }
  }
  __syncthreads();
  const double lt = s_lse[0], ls = s_lse[1];

  // (2) KL and the gradient
  const double wi = (double)w[i], cg = wi * T;
  double kl = 0;
  for (int v0 = threadIdx.x; v0 < V; v0 += kKlBlock * kKlUnroll) {
    float a[kKlUnroll], b[kKlUnroll], gv[kKlUnroll];
#pragma unroll
    for (int u = 0; u < kKlUnroll; ++u) {
      const int v = v0 + u * kKlBlock;
      a[u] = v < V ? __ldg(zt + v) : 0.f;
      b[u] = v < V ? __ldg(zs + v) : 0.f;
      gv[u] = v < V ? g[v] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kKlUnroll; ++u) {
      const int v = v0 + u * kKlBlock;
      if (v < V) {
        const double lp = (double)a[u] * invT - lt, lq = (double)b[u] * invT - ls;
        const double p = exp(lp), q = exp(lq);
        if (p != 0) kl += p * (lp - lq);  // 0·log 0 = 0 (a NaN still propagates)
        g[v] = (float)((double)gv[u] + cg * (q - p));
      }
    }
  }
  kl = warp_sum_d(kl);
  if (lane == 0) part_kl[warp] = kl;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int k = 0; k < kKlWarps; ++k) t += part_kl[k];
    loss[i] = (float)(wi * T * T * t);
  }
}

// ---- loss_aware_merge -----------------------------------------------------------------------------

template <typename WT>
__global__ void loss_aware_merge_kernel(float* out, const typename WT::storage* base, const float* const* shards,
                                        const float* weights, int k, size_t n) {
  for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < n; p += (size_t)gridDim.x * blockDim.x) {
    const double bp = wload<WT>(base, p);
    int pos = 0, neg = 0;
    double sum = 0, wsum = 0, bestv = -1, bestt = 0;
    for (int i = 0; i < k; ++i) {
      const double t = __dsub_rn((double)shards[i][p], bp);
      if (t == 0) continue;
      if (t > 0) ++pos;
      else ++neg;
      const double w = (double)weights[i];
      sum = __dadd_rn(sum, __dmul_rn(w, t));
      wsum = __dadd_rn(wsum, w);
      const double s = __dmul_rn(w, fabs(t));
      if (s > bestv) {  // strict: ties keep the lower index
        bestv = s;
        bestt = t;
      }
    }
    double delta = 0;
    if (pos && neg) delta = bestt;  // = shard_best[p] − bp, kept from the read (out may alias that shard)
    else if ((pos || neg) && wsum > 0) delta = __ddiv_rn(sum, wsum);
    out[p] = (float)__dadd_rn(bp, delta);
  }
}

}  // namespace

// ---- launchers (declared in cuda_backend.cu) -------------------------------------------------------

void kd_loss_launch(cudaStream_t st, int /*sm_count*/, float* out, float* dfeat, const float* feat, int b, int D, float lambda,
                    float theta) {
  check_arg(b >= 2, "kd_loss", "b must be >= 2 (row 0 is the teacher)");
  check_arg(D >= 1, "kd_loss", "D must be >= 1");
  check_arg(out != nullptr && dfeat != nullptr && feat != nullptr, "kd_loss", "null pointer");
  check_arg(b <= 65535, "kd_loss", "b too large for one launch");
  // The CPU's exact coefficient expressions: −λ/(b−1) in f32 (float / int), 2θ/b in double.
  const double ca = -lambda / (b - 1);
  const double cb = theta * 2.0 / b;

  // scratch: nrm[b] | c[b] | v[b] | go[b] | mean[D]  (doubles)
  const size_t bb = (size_t)b;
  Scratch scratch(st, (4 * bb + (size_t)D) * sizeof(double));
  double* nrm = (double*)scratch.bytes();
  double* c = nrm + bb;
  double* v = c + bb;
  double* go = v + bb;
  double* mean = go + bb;

  kd_norm_kernel<<<(unsigned)b, kRowBlock, 0, st>>>(nrm, feat, D);
  RE_CUDA_LAUNCH("kd_loss (norms)");
  kd_mean_kernel<<<grid_for((size_t)D, 256), 256, 0, st>>>(mean, feat, nrm, b, D);
  RE_CUDA_LAUNCH("kd_loss (mean)");
  kd_row_kernel<<<(unsigned)b, kRowBlock, 0, st>>>(c, v, go, feat, nrm, mean, D, ca, cb);
  RE_CUDA_LAUNCH("kd_loss (row sums)");
  kd_loss_kernel<<<1, 32, 0, st>>>(out, c, v, b, lambda, theta);
  RE_CUDA_LAUNCH("kd_loss (loss)");
  kd_grad_kernel<<<grid_for(bb * (size_t)D, 256), 256, 0, st>>>(dfeat, feat, nrm, mean, go, b, D, ca, cb);
  RE_CUDA_LAUNCH("kd_loss (gradient)");
}

void kl_distill_launch(cudaStream_t st, int /*sm_count*/, float* loss, float* dlogits, const float* logits, const int32_t* student,
                       const int32_t* teacher, const float* w, int P, int V, float T) {
  check_arg(P >= 0, "kl_distill", "P must be >= 0");
  check_arg(V >= 1 && V <= 0x7fffffff - kKlBlock * kKlUnroll, "kl_distill",
            "V must be >= 1 and below 2^31 - kKlBlock·kKlUnroll");
  check_arg(T > 0 && std::isfinite(T), "kl_distill", "T must be finite and > 0");
  if (P == 0) return;
  check_arg(loss != nullptr && dlogits != nullptr && logits != nullptr && student != nullptr && teacher != nullptr &&
                w != nullptr,
            "kl_distill", "null pointer");
  const double Td = T;
  kl_distill_kernel<<<(unsigned)P, kKlBlock, 0, st>>>(loss, dlogits, logits, student, teacher, w, V, Td, 1.0 / Td);
  RE_CUDA_LAUNCH("kl_distill");
}

void loss_aware_merge_launch(cudaStream_t st, int /*sm_count*/, float* out, WeightRef base, const float* const* shards,
                             const float* weights, int k, size_t n) {
  check_arg(k >= 0 && k <= 65535, "loss_aware_merge", "k must be in 0..65535");
  check_arg(base.p != nullptr || n == 0, "loss_aware_merge", "null base");
  check_arg(k == 0 || (shards != nullptr && weights != nullptr), "loss_aware_merge", "null shard/weight array");
  if (n == 0) return;
  check_arg(out != nullptr, "loss_aware_merge", "null output");
  for (int i = 0; i < k; ++i) check_arg(shards[i] != nullptr, "loss_aware_merge", "null shard");

  // scratch: [shard pointers][weights], uploaded from a pageable host buffer (staged before the call returns)
  const size_t kk = (size_t)std::max(k, 1);
  const size_t o_w = align_up(kk * sizeof(float*), 16);
  const size_t bytes = o_w + kk * sizeof(float);
  std::vector<char> host(bytes, 0);
  for (int i = 0; i < k; ++i) {
    std::memcpy(host.data() + i * sizeof(float*), &shards[i], sizeof(float*));
    std::memcpy(host.data() + o_w + i * sizeof(float), &weights[i], sizeof(float));
  }
  Scratch scratch(st, bytes);
  char* dev = scratch.bytes();
  RE_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, st));
  const float* const* dptrs = (const float* const*)dev;
  const float* dw = (const float*)(dev + o_w);

  dispatch_dtype(base.dt, [&](auto wt) {
    using WT = decltype(wt);
    loss_aware_merge_kernel<WT><<<grid_for(n, 256), 256, 0, st>>>(out, (const typename WT::storage*)base.p, dptrs,
                                                                  dw, k, n);
  });
  RE_CUDA_LAUNCH("loss_aware_merge");
}

}  // namespace cuda
}  // namespace re
