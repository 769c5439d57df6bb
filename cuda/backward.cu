// backward.cu — the suffix backward on the GPU (CUDA twins of native/cpu/backward.cpp): input gradients
// of gather_rows, linear, RMSNorm, RoPE, attention and SwiGLU, and the cross-entropy loss at label rows.
// No weight gradient is formed here (the side memory's is fused into masked_sgd, wise.cu).
//
//   scatter_add_rows  y[idx[i], :] += x[i, :]. One thread per element, atomicAdd (idx entries are
//                     distinct by contract, so this is a single exact add per element; duplicates would
//                     still be summed correctly, in an unspecified order).
//   linear_dx         dx[M,K] (+)= dy[M,N]·W[N,K] (W in its stored dtype).
//                     M > 8: 64×64 output tiles over (m, k), reduction chunks of 16 over n in shared
//                     memory, 256 threads × 4×4 outputs, sequential f32 FMA over n (like the CPU's axpy).
//                     M <= 8: one thread per output column k holding all M rows in registers; W rows are
//                     streamed once, coalesced along k; dy chunks are broadcast from shared memory.
//                     Both paths split the n range over gridDim.z when the (m, k) tiles alone would
//                     leave SMs idle (the lm_head backward: N = vocab, K = hidden). Split partials go to
//                     a stream-ordered scratch buffer and a second kernel adds them in a fixed order, so
//                     results are deterministic (no float atomics).
//   rmsnorm_bwd       one block per row; both row reductions (Σx², Σ w·dy·x) in double, as the CPU does.
//   rope_bwd          one thread per rotated pair; cos/sin of the f32 angle in double rounded to f32 and
//                     un-fused f32 products/sums, exactly the CPU's arithmetic (bit-identical results).
//   attention_bwd     two kernels, no atomics. (1) one warp per query row (b, t, h): an online pass
//                     computes the softmax statistics (max, sum) and D = Σ_j p_j·dp_j, a second pass
//                     forms dq; (lse, D) per row go to scratch. (2) one warp per key row (b, j, kv head g):
//                     dk[j] = Σ_{h in g} Σ_{t >= j} ds_tj·q_t and dv[j] = Σ p_tj·dout_t, recomputing the
//                     scores from q, k and the stored statistics. Lanes own head dims lane, lane+32, ...
//                     Scores/exps are f32 (expf, not __expf): ~1e-6 relative vs the CPU's f64.
//   swiglu_bwd        elementwise, σ and silu in double (same formula as the CPU).
//   cross_entropy     one block per row: max, Σ exp in double, lse; dlogits = softmax − onehot, times the
//                     row weight. A row with label < 0 (or >= V) gets loss 0 and a zero gradient.
#include <math_constants.h>

#include <algorithm>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

namespace {

// Stream-ordered scratch: Scratch in common.cuh (counted in the backend's memory figures).

// ---- scatter_add_rows --------------------------------------------------------------------------

__global__ void scatter_add_rows_kernel(float* y, const float* x, const int32_t* idx, int D, size_t total) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / (size_t)D, e = i % (size_t)D;
    atomicAdd(y + (size_t)idx[r] * D + e, x[i]);
  }
}

// ---- linear_dx -----------------------------------------------------------------------------------

constexpr int kDxTile = 64;   // output tile (m and k)
constexpr int kDxChunk = 16;  // reduction chunk over n
constexpr int kDxPadA = 68;   // row stride of the transposed dy tile (16-byte aligned, fewer bank conflicts)

// Tiled: dx tile [m0, m0+64) × [k0, k0+64), reduction over n in [nb, ne). part != null: write the raw
// partial sum to part[z][M][K] instead of dx.
template <typename WT>
__global__ void __launch_bounds__(256)
    linear_dx_tiled_kernel(float* dx, float* part, const float* dy, const typename WT::storage* W, int M, int N, int K,
                           int nper, bool accumulate) {
  __shared__ __align__(16) float As[kDxChunk][kDxPadA];  // As[nn][mm] = dy[m0+mm, n+nn]
  __shared__ __align__(16) float Bs[kDxChunk][kDxTile];  // Bs[nn][kk] = W[n+nn, k0+kk]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int k0 = blockIdx.x * kDxTile, m0 = blockIdx.y * kDxTile;
  const int nb = blockIdx.z * nper, ne = min(N, nb + nper);
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int n = nb; n < ne; n += kDxChunk) {
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int id = tid + l * 256;
      // dy tile: 64 rows (m) × 16 columns (n); consecutive threads read consecutive n
      {
        const int mm = id / kDxChunk, nn = id % kDxChunk;
        const int m = m0 + mm, nc = n + nn;
        As[nn][mm] = (m < M && nc < ne) ? __ldg(dy + (size_t)m * N + nc) : 0.f;
      }
      // W tile: 16 rows (n) × 64 columns (k); consecutive threads read consecutive k
      {
        const int nn = id / kDxTile, kk = id % kDxTile;
        const int nc = n + nn, k = k0 + kk;
        Bs[nn][kk] = (nc < ne && k < K) ? wload<WT>(W, (size_t)nc * K + k) : 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int nn = 0; nn < kDxChunk; ++nn) {
      const float4 a = *(const float4*)&As[nn][ty * 4];
      const float4 b = *(const float4*)&Bs[nn][tx * 4];
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty * 4 + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = k0 + tx * 4 + j;
      if (k >= K) continue;
      const size_t o = (size_t)m * K + k;
      if (part) part[(size_t)blockIdx.z * M * K + o] = acc[i][j];
      else dx[o] = accumulate ? dx[o] + acc[i][j] : acc[i][j];
    }
  }
}

constexpr int kDxSmallCols = 128;  // columns (threads) per block of the small-M path
constexpr int kDxSmallChunk = 64;  // n per shared-memory chunk of dy

template <typename WT, int MR>
__global__ void __launch_bounds__(kDxSmallCols)
    linear_dx_small_kernel(float* dx, float* part, const float* dy, const typename WT::storage* W, int M, int N, int K,
                           int nper, bool accumulate) {
  __shared__ float ds[MR][kDxSmallChunk];
  const int k = blockIdx.x * kDxSmallCols + threadIdx.x;
  const int nb = blockIdx.z * nper, ne = min(N, nb + nper);
  float acc[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) acc[m] = 0.f;
  for (int n = nb; n < ne; n += kDxSmallChunk) {
    const int cn = min(kDxSmallChunk, ne - n);
    for (int i = threadIdx.x; i < MR * kDxSmallChunk; i += kDxSmallCols) {
      const int m = i / kDxSmallChunk, nn = i % kDxSmallChunk;
      ds[m][nn] = (m < M && nn < cn) ? __ldg(dy + (size_t)m * N + n + nn) : 0.f;
    }
    __syncthreads();
    if (k < K) {
      const typename WT::storage* wp = W + (size_t)n * K + k;
#pragma unroll 4
      for (int nn = 0; nn < cn; ++nn) {
        const float w = wload<WT>(wp, (size_t)nn * K);
#pragma unroll
        for (int m = 0; m < MR; ++m) acc[m] = fmaf(ds[m][nn], w, acc[m]);
      }
    }
    __syncthreads();
  }
  if (k >= K) return;
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    if (m >= M) break;
    const size_t o = (size_t)m * K + k;
    if (part) part[(size_t)blockIdx.z * M * K + o] = acc[m];
    else dx[o] = accumulate ? dx[o] + acc[m] : acc[m];
  }
}

// dx[i] = (accumulate ? dx[i] : 0) + Σ_z part[z][i], z in order.
__global__ void linear_dx_reduce_kernel(float* dx, const float* part, int splits, size_t total, bool accumulate) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int z = 0; z < splits; ++z) s += part[(size_t)z * total + i];
    dx[i] = accumulate ? dx[i] + s : s;
  }
}

// ---- rmsnorm_bwd ----------------------------------------------------------------------------------

constexpr int kNormBwdBlock = 256;


template <typename WT>
__global__ void __launch_bounds__(kNormBwdBlock)
    rmsnorm_bwd_kernel(float* dx, const float* dy, const float* x, const typename WT::storage* w, int D, float eps,
                       bool accumulate) {
  __shared__ double part_ss[kNormBwdBlock / 32], part_dot[kNormBwdBlock / 32];
  __shared__ double s_r, s_c;
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)D;
  const float* gr = dy + row * (size_t)D;
  float* o = dx + row * (size_t)D;
  double ss = 0, dot = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double xv = xr[i];
    ss += xv * xv;
    dot += (double)wload<WT>(w, (size_t)i) * (double)gr[i] * xv;
  }
  ss = warp_sum_d(ss);
  dot = warp_sum_d(dot);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  if (lane == 0) {
    part_ss[warp] = ss;
    part_dot[warp] = dot;
  }
  __syncthreads();
  if (warp == 0) {
    double a = lane < nwarps ? part_ss[lane] : 0.0, b = lane < nwarps ? part_dot[lane] : 0.0;
    a = warp_sum_d(a);
    b = warp_sum_d(b);
    if (lane == 0) {
      const double r = 1.0 / sqrt(a / D + (double)eps);
      s_r = r;
      s_c = r * r * r * b / D;
    }
  }
  __syncthreads();
  const double r = s_r, c = s_c;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = (float)(r * (double)wload<WT>(w, (size_t)i) * (double)gr[i] - (double)xr[i] * c);
    o[i] = accumulate ? o[i] + v : v;
  }
}

// ---- rope_bwd -------------------------------------------------------------------------------------

__global__ void rope_bwd_kernel(float* x, const int32_t* pos, const float* inv_freq, int n_head, int hd, size_t total) {
  const int half = hd / 2;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const int f = (int)(i % (size_t)half);
    const size_t th = i / (size_t)half;  // t * n_head + h
    const int t = (int)(th / (size_t)n_head);
    const float ang = __fmul_rn((float)pos[t], inv_freq[f]);
    double sd, cd;
    sincos((double)ang, &sd, &cd);
    const float c = (float)cd, s = (float)sd;
    float* row = x + th * (size_t)hd;
    const float g1 = row[f], g2 = row[f + half];
    // inverse rotation (θ → −θ); un-fused like the CPU
    row[f] = __fadd_rn(__fmul_rn(g1, c), __fmul_rn(g2, s));
    row[f + half] = __fsub_rn(__fmul_rn(g2, c), __fmul_rn(g1, s));
  }
}

// ---- attention_bwd --------------------------------------------------------------------------------

constexpr int kAttWarps = 4;  // rows (warps) per block

// Warp-wide dot of a register-held row (lanes own dims lane + 32·i) with row p of length hd.
template <int R>
__device__ __forceinline__ float row_dot(const float (&a)[R], const float* p, int lane, int hd) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane + 32 * i;
    if (e < hd) s = fmaf(a[i], __ldg(p + e), s);
  }
  return warp_sum(s);
}

// (1) dq and per-row statistics. Row r = (b·T + t)·Hq + h, one warp each.
template <int R>
__global__ void __launch_bounds__(kAttWarps * 32)
    attention_bwd_dq_kernel(float* dq, float2* stats, const float* dout, const float* q, const float* kc,
                            const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd, float scale) {
  const int lane = threadIdx.x % 32;
  const size_t row = (size_t)blockIdx.x * kAttWarps + threadIdx.x / 32;
  if (row >= (size_t)B * T * Hq) return;  // whole warp leaves together
  const int h = (int)(row % (size_t)Hq);
  const int t = (int)((row / (size_t)Hq) % (size_t)T);
  const int b = (int)(row / ((size_t)Hq * T));
  const int g = h / (Hq / Hkv);
  const int j0 = max(0, (int)pad[b]);
  const size_t qo = row * (size_t)hd;
  if (j0 > t) {  // a padding query row: no gradient
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int e = lane + 32 * i;
      if (e < hd) dq[qo + e] = 0.f;
    }
    if (lane == 0) stats[row] = make_float2(0.f, 0.f);
    return;
  }
  const float* kb = kc + ((size_t)b * Hkv + g) * (size_t)T * hd;
  const float* vb = vc + ((size_t)b * Hkv + g) * (size_t)T * hd;
  float qv[R], gv[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane + 32 * i;
    qv[i] = e < hd ? __ldg(q + qo + e) : 0.f;
    gv[i] = e < hd ? __ldg(dout + qo + e) : 0.f;
  }
  // online pass: m = max score, l = Σ e^{s−m}, a = Σ e^{s−m}·dp
  float m = -CUDART_INF_F, l = 0.f, a = 0.f;
  for (int j = j0; j <= t; ++j) {
    const float s = row_dot<R>(qv, kb + (size_t)j * hd, lane, hd) * scale;
    const float dp = row_dot<R>(gv, vb + (size_t)j * hd, lane, hd);
    if (s > m) {
      const float c = expf(m - s);  // m = −inf on the first key: c = 0
      l *= c;
      a *= c;
      m = s;
    }
    const float p = expf(s - m);
    l += p;
    a = fmaf(p, dp, a);
  }
  const float Dv = a / l, lse = m + logf(l);
  float acc[R];
#pragma unroll
  for (int i = 0; i < R; ++i) acc[i] = 0.f;
  for (int j = j0; j <= t; ++j) {
    const float* kr = kb + (size_t)j * hd;
    const float s = row_dot<R>(qv, kr, lane, hd) * scale;
    const float dp = row_dot<R>(gv, vb + (size_t)j * hd, lane, hd);
    const float ds = expf(s - lse) * (dp - Dv) * scale;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int e = lane + 32 * i;
      if (e < hd) acc[i] = fmaf(ds, __ldg(kr + e), acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane + 32 * i;
    if (e < hd) dq[qo + e] = acc[i];
  }
  if (lane == 0) stats[row] = make_float2(lse, Dv);
}

// (2) dk, dv. Row r = (b·T + j)·Hkv + g (the dk/dv layout), one warp each.
template <int R>
__global__ void __launch_bounds__(kAttWarps * 32)
    attention_bwd_dkv_kernel(float* dk, float* dv, const float2* stats, const float* dout, const float* q,
                             const float* kc, const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv,
                             int hd, float scale) {
  const int lane = threadIdx.x % 32;
  const size_t row = (size_t)blockIdx.x * kAttWarps + threadIdx.x / 32;
  if (row >= (size_t)B * T * Hkv) return;
  const int g = (int)(row % (size_t)Hkv);
  const int j = (int)((row / (size_t)Hkv) % (size_t)T);
  const int b = (int)(row / ((size_t)Hkv * T));
  const int j0 = max(0, (int)pad[b]);
  const size_t ko = row * (size_t)hd;
  float ak[R], av[R];
#pragma unroll
  for (int i = 0; i < R; ++i) ak[i] = av[i] = 0.f;
  if (j >= j0) {
    const int group = Hq / Hkv;
    const size_t co = (((size_t)b * Hkv + g) * T + j) * hd;
    float kv[R], vv[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int e = lane + 32 * i;
      kv[i] = e < hd ? __ldg(kc + co + e) : 0.f;
      vv[i] = e < hd ? __ldg(vc + co + e) : 0.f;
    }
    for (int h = g * group; h < (g + 1) * group; ++h)
      for (int t = j; t < T; ++t) {  // t >= j >= j0: every such query row attends key j
        const size_t r = ((size_t)b * T + t) * Hq + h;
        const float* qr = q + r * hd;
        const float* gr = dout + r * hd;
        const float2 st = __ldg(stats + r);
        const float s = row_dot<R>(kv, qr, lane, hd) * scale;
        const float dp = row_dot<R>(vv, gr, lane, hd);
        const float p = expf(s - st.x);
        const float ds = p * (dp - st.y) * scale;
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int e = lane + 32 * i;
          if (e < hd) {
            ak[i] = fmaf(ds, __ldg(qr + e), ak[i]);
            av[i] = fmaf(p, __ldg(gr + e), av[i]);
          }
        }
      }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int e = lane + 32 * i;
    if (e < hd) {
      dk[ko + e] = ak[i];
      dv[ko + e] = av[i];
    }
  }
}

template <int R>
void launch_attention_bwd(cudaStream_t st, float* dq, float* dk, float* dv, float2* stats, const float* dout,
                          const float* q, const float* kc, const float* vc, const int32_t* pad, int B, int T, int Hq,
                          int Hkv, int hd, float scale) {
  const size_t rq = (size_t)B * T * Hq, rk = (size_t)B * T * Hkv;
  attention_bwd_dq_kernel<R><<<(unsigned)((rq + kAttWarps - 1) / kAttWarps), kAttWarps * 32, 0, st>>>(
      dq, stats, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
  RE_CUDA_LAUNCH("attention_bwd (dq)");
  attention_bwd_dkv_kernel<R><<<(unsigned)((rk + kAttWarps - 1) / kAttWarps), kAttWarps * 32, 0, st>>>(
      dk, dv, stats, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
  RE_CUDA_LAUNCH("attention_bwd (dk/dv)");
}

// ---- swiglu_bwd -----------------------------------------------------------------------------------

__global__ void swiglu_bwd_kernel(float* dgate, float* dup, const float* dy, const float* gate, const float* up, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const double g = gate[i], s = act::sigmoid(g), silu = g * s;
    const double ds = s * (1.0 + g * (1.0 - s));
    const float u = up[i], d = dy[i];
    const float du = __fmul_rn(d, u);  // the CPU forms d·u in f32 first
    dgate[i] = (float)((double)du * ds);
    dup[i] = (float)((double)d * silu);
  }
}

// ---- cross_entropy --------------------------------------------------------------------------------

constexpr int kCeBlock = 256;

__global__ void __launch_bounds__(kCeBlock)
    cross_entropy_kernel(float* loss, float* dlogits, const float* logits, const int32_t* labels, const float* weight,
                         int V) {
  __shared__ float s_part[kCeBlock / 32];
  __shared__ double d_part[kCeBlock / 32];
  __shared__ float s_mx;
  __shared__ double s_den;
  const size_t r = blockIdx.x;
  const float* z = logits + r * (size_t)V;
  float* gz = dlogits + r * (size_t)V;
  const int y = labels[r];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  if (y < 0 || y >= V) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) gz[i] = 0.f;
    if (threadIdx.x == 0) loss[r] = 0.f;
    return;
  }
  float mx = -CUDART_INF_F;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, z[i]);
  mx = warp_max(mx);
  if (lane == 0) s_part[warp] = mx;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nwarps ? s_part[lane] : -CUDART_INF_F;
    t = warp_max(t);
    if (lane == 0) s_mx = t;
  }
  __syncthreads();
  mx = s_mx;
  double den = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) den += (double)expf(z[i] - mx);
  den = warp_sum_d(den);
  if (lane == 0) d_part[warp] = den;
  __syncthreads();
  if (warp == 0) {
    double t = lane < nwarps ? d_part[lane] : 0.0;
    t = warp_sum_d(t);
    if (lane == 0) s_den = t;
  }
  __syncthreads();
  den = s_den;
  const double w = weight[r];
  const float inv = (float)(1.0 / den), wf = (float)w;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float p = expf(z[i] - mx) * inv;
    gz[i] = (i == y ? p - 1.0f : p) * wf;
  }
  if (threadIdx.x == 0) loss[r] = (float)(((double)mx + log(den) - (double)z[y]) * w);
}

}  // namespace

// ---- launchers (declared in cuda_backend.cu) -------------------------------------------------------

void scatter_add_rows_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* x, const int32_t* idx, int n, int D) {
  check_arg(n >= 0 && D >= 0, "scatter_add_rows", "negative size");
  const size_t total = (size_t)n * D;
  if (total == 0) return;
  scatter_add_rows_kernel<<<grid_for(total, 256), 256, 0, st>>>(y, x, idx, D, total);
  RE_CUDA_LAUNCH("scatter_add_rows");
}

void linear_dx_launch(cudaStream_t st, int sm_count, float* dx, const float* dy, WeightRef W, int M, int N, int K,
                        bool accumulate) {
  check_arg(M >= 0 && N >= 0 && K >= 0, "linear_dx", "negative size");
  check_arg(W.p != nullptr || (size_t)N * K == 0, "linear_dx", "null weight");
  check_arg((M + kDxTile - 1) / kDxTile <= 65535, "linear_dx", "M too large for one launch");
  if (M == 0 || K == 0) return;
  if (N == 0) {  // empty reduction: dx = 0 (or unchanged)
    if (!accumulate) RE_CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)M * K * sizeof(float), st));
    return;
  }
  const bool small = M <= 8;
  const long long tiles = small ? (long long)((K + kDxSmallCols - 1) / kDxSmallCols)
                                : (long long)((K + kDxTile - 1) / kDxTile) * ((M + kDxTile - 1) / kDxTile);
  // Split n when the tiles alone leave SMs idle: aim at ~2 blocks per SM, each split >= 256 of n.
  int splits = 1;
  const long long want = 2LL * (sm_count > 0 ? sm_count : 1);
  if (tiles < want) {
    long long s = (want + tiles - 1) / tiles;
    s = std::min<long long>(s, std::max(1, N / 256));
    s = std::min<long long>(s, 64);
    splits = (int)std::max<long long>(s, 1);
  }
  const int chunk = small ? kDxSmallChunk : kDxChunk;
  int nper = (N + splits - 1) / splits;
  nper = (nper + chunk - 1) / chunk * chunk;
  splits = (N + nper - 1) / nper;
  Scratch scratch(st, splits > 1 ? (size_t)splits * M * K * sizeof(float) : 0);
  float* part = splits > 1 ? scratch.as<float>() : nullptr;

  dispatch_dtype(W.dt, [&](auto wt) {
    using WT = decltype(wt);
    using S = typename WT::storage;
    if (small) {
      const dim3 grid((unsigned)((K + kDxSmallCols - 1) / kDxSmallCols), 1u, (unsigned)splits);
      switch (M) {
#define RE_DX_SMALL(MR) \
  case MR: linear_dx_small_kernel<WT, MR><<<grid, kDxSmallCols, 0, st>>>(dx, part, dy, (const S*)W.p, M, N, K, nper, accumulate); break;
        RE_DX_SMALL(1) RE_DX_SMALL(2) RE_DX_SMALL(3) RE_DX_SMALL(4)
        RE_DX_SMALL(5) RE_DX_SMALL(6) RE_DX_SMALL(7) RE_DX_SMALL(8)
#undef RE_DX_SMALL
      }
    } else {
      const dim3 grid((unsigned)((K + kDxTile - 1) / kDxTile), (unsigned)((M + kDxTile - 1) / kDxTile),
                      (unsigned)splits);
      linear_dx_tiled_kernel<WT><<<grid, 256, 0, st>>>(dx, part, dy, (const S*)W.p, M, N, K, nper, accumulate);
    }
  });
  RE_CUDA_LAUNCH("linear_dx");
  if (splits > 1) {
    const size_t total = (size_t)M * K;
    linear_dx_reduce_kernel<<<grid_for(total, 256), 256, 0, st>>>(dx, part, splits, total, accumulate);
    RE_CUDA_LAUNCH("linear_dx (split reduce)");
  }
}

void rmsnorm_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dx, const float* dy, const float* x, WeightRef w, int M, int D,
                          float eps, bool accumulate) {
  check_arg(M >= 0 && D >= 0, "rmsnorm_bwd", "negative size");
  check_arg(w.p != nullptr || M == 0 || D == 0, "rmsnorm_bwd", "null weight");
  if (M == 0 || D == 0) return;
  const int block = D >= kNormBwdBlock ? kNormBwdBlock : ((D + 31) / 32) * 32;
  dispatch_dtype(w.dt, [&](auto wt) {
    using WT = decltype(wt);
    rmsnorm_bwd_kernel<WT><<<(unsigned)M, block, 0, st>>>(dx, dy, x, (const typename WT::storage*)w.p, D, eps,
                                                         accumulate);
  });
  RE_CUDA_LAUNCH("rmsnorm_bwd");
}

void rope_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head,
                       int head_dim) {
  check_arg(n_tok >= 0 && n_head >= 0 && head_dim >= 0, "rope_bwd", "negative size");
  check_arg(head_dim % 2 == 0, "rope_bwd", "head_dim must be even");
  const size_t total = (size_t)n_tok * n_head * (head_dim / 2);
  if (total == 0) return;
  rope_bwd_kernel<<<grid_for(total, 256), 256, 0, st>>>(dx, pos, inv_freq, n_head, head_dim, total);
  RE_CUDA_LAUNCH("rope_bwd");
}

void attention_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* kc, const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd,
                            float scale) {
  check_arg(B >= 0 && T >= 0 && Hq >= 0 && Hkv >= 0 && hd >= 0, "attention_bwd", "negative size");
  check_arg(Hkv > 0 && Hq % Hkv == 0, "attention_bwd", "Hq must be a positive multiple of Hkv");
  check_arg(hd >= 1 && hd <= 256, "attention_bwd", "head_dim must be in 1..256");
  if ((size_t)B * T == 0) return;
  const size_t rq = (size_t)B * T * Hq, rk = (size_t)B * T * Hkv;
  check_arg((rq + kAttWarps - 1) / kAttWarps <= 0x7fffffffu && (rk + kAttWarps - 1) / kAttWarps <= 0x7fffffffu,
            "attention_bwd", "too many rows for one launch");
  Scratch stats(st, rq * sizeof(float2));
  float2* sp = stats.as<float2>();
  if (hd <= 32) launch_attention_bwd<1>(st, dq, dk, dv, sp, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
  else if (hd <= 64) launch_attention_bwd<2>(st, dq, dk, dv, sp, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
  else if (hd <= 128) launch_attention_bwd<4>(st, dq, dk, dv, sp, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
  else launch_attention_bwd<8>(st, dq, dk, dv, sp, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale);
}

void swiglu_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                         size_t n) {
  if (n == 0) return;
  swiglu_bwd_kernel<<<grid_for(n, 256), 256, 0, st>>>(dgate, dup, dy, gate, up, n);
  RE_CUDA_LAUNCH("swiglu_bwd");
}

void cross_entropy_launch(cudaStream_t st, int /*sm_count*/, float* loss, float* dlogits, const float* logits, const int32_t* labels,
                            const float* weight, int R, int V) {
  check_arg(R >= 0 && V >= 0, "cross_entropy", "negative size");
  if (R == 0) return;
  if (V == 0) {
    RE_CUDA_CHECK(cudaMemsetAsync(loss, 0, (size_t)R * sizeof(float), st));
    return;
  }
  cross_entropy_kernel<<<(unsigned)R, kCeBlock, 0, st>>>(loss, dlogits, logits, labels, weight, V);
  RE_CUDA_LAUNCH("cross_entropy");
}

}  // namespace cuda
}  // namespace re
