// wise.cu — the WISE kernels on the GPU (CUDA twins of native/cpu/wise.cpp): activation-score distances
// and their gradient, the fused masked SGD step of a side memory, and the TIES merge.
//
//   act_dist      one warp per (token t, memory i); φ and the squared-difference sum in double (as the
//                 CPU), so near-identical side/main outputs (d ≈ 0 right after a reset) keep their
//                 relative accuracy. os is the stacked [n, nm·D] output of one GEMM over all memories.
//   act_dist_bwd  one block per token: the distance (double reduction), then the elementwise gradient.
//   masked_sgd    one fused kernel: a 64×64 tile of g = Gᵀ·A (rows n, columns k) is accumulated in
//                 registers over m (chunks of 16 rows of G and A staged in shared memory, f32 FMA in m
//                 order like the CPU's axpy), then the epilogue applies, per element,
//                   W' ← clamp(W' − lr·(keep·g + wd·W'), Wv − c, Wv + c),  keep = philox_keep(seed, n·K + k, ρ)
//                 with un-fused f32 arithmetic in the CPU's order (__fmul_rn/__fadd_rn), so the update
//                 itself rounds exactly like the CPU. The full dW' never exists in memory. The mask bits
//                 come from native/philox.h, the same function the CPU calls: identical on both backends.
//   ties_merge    (1) exact per-shard top-K threshold on |τ| = |shard − base| (f32, as the CPU) by a
//                 3-pass radix select (11 + 11 + 10 bits of the float's bit pattern, which orders like
//                 the value for non-negative floats): per pass a shared-memory histogram per block,
//                 merged into a global one, and a one-block select kernel that picks the digit holding
//                 the K-th largest. Everything stays on the device (no host round trips).
//                 (2) ties at the threshold keep the lower index, as the CPU: after the select we know
//                 how many elements equal to the threshold must be kept (K − #greater); when that is not
//                 all of them, per-chunk counts of equals and a one-block scan locate the index of the
//                 last kept equal element (tie_end). keep(p) = |τ(p)| > thr  or  (|τ(p)| == thr and p < tie_end).
//                 (3) one fused elementwise kernel: weighted sign election and disjoint mean, in double
//                 with explicitly rounded operations (no FMA contraction), in the CPU's order.
//                 Shard pointers, weights and per-shard select state are copied to a stream-ordered
//                 scratch buffer; `out` may alias a shard (each element is read before it is written).
#include <math_constants.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"
#include "philox.h"

namespace re {
namespace cuda {

namespace {

// Stream-ordered scratch: Scratch in common.cuh (counted in the backend's memory figures).


// ---- act_dist / act_dist_bwd --------------------------------------------------------------------

// φ and φ' (activation.h, shared with the CPU kernels)
__device__ __forceinline__ double act_fn(double x, int act) { return act::phi(x, act); }
__device__ __forceinline__ double act_grad(double x, int act) { return act::phi_grad(x, act); }

constexpr int kDistWarps = 8;

__global__ void __launch_bounds__(kDistWarps * 32)
    act_dist_kernel(float* d, const float* os, const float* om, int n, int nm, int D, int act) {
  const int lane = threadIdx.x % 32;
  const size_t task = (size_t)blockIdx.x * kDistWarps + threadIdx.x / 32;
  if (task >= (size_t)n * nm) return;
  const int t = (int)(task / (size_t)nm), i = (int)(task % (size_t)nm);
  const float* a = os + (size_t)t * nm * D + (size_t)i * D;
  const float* b = om + (size_t)t * D;
  double ss = 0;
  for (int e = lane; e < D; e += 32) {
    const double diff = act_fn(__ldg(a + e), act) - act_fn(__ldg(b + e), act);
    ss += diff * diff;
  }
  ss = warp_sum_d(ss);
  if (lane == 0) d[(size_t)i * n + t] = (float)sqrt(ss);
}

constexpr int kDistBwdBlock = 256;

__global__ void __launch_bounds__(kDistBwdBlock)
    act_dist_bwd_kernel(float* dos, const float* gd, const float* os, const float* om, int D, int act, bool accumulate) {
  __shared__ double part[kDistBwdBlock / 32];
  __shared__ double s_dist;
  const size_t t = blockIdx.x;
  const float* a = os + t * (size_t)D;
  const float* b = om + t * (size_t)D;
  float* o = dos + t * (size_t)D;
  double ss = 0;
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    const double diff = act_fn(a[e], act) - act_fn(b[e], act);
    ss += diff * diff;
  }
  ss = warp_sum_d(ss);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  if (lane == 0) part[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    double v = lane < nwarps ? part[lane] : 0.0;
    v = warp_sum_d(v);
    if (lane == 0) s_dist = sqrt(v);
  }
  __syncthreads();
  const double dist = s_dist, g = gd[t];
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    double v = 0;
    if (dist > 0) v = g / dist * (act_fn(a[e], act) - act_fn(b[e], act)) * act_grad(a[e], act);
    o[e] = accumulate ? o[e] + (float)v : (float)v;
  }
}

// ---- masked_sgd ---------------------------------------------------------------------------------

constexpr int kSgdTile = 64;   // output tile (n and k)
constexpr int kSgdChunk = 16;  // rows of G and A per shared-memory stage

template <typename WT>
__global__ void __launch_bounds__(256)
    masked_sgd_kernel(float* Wp, const float* G, const float* A, const typename WT::storage* Wv, int M, int N, int K,
                      uint64_t seed, float rho, float lr, float wd, float clamp) {
  __shared__ __align__(16) float Gs[kSgdChunk][kSgdTile];  // Gs[mm][nn] = G[m+mm, n0+nn]
  __shared__ __align__(16) float As[kSgdChunk][kSgdTile];  // As[mm][kk] = A[m+mm, k0+kk]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int k0 = blockIdx.x * kSgdTile, n0 = blockIdx.y * kSgdTile;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int m = 0; m < M; m += kSgdChunk) {
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int id = tid + l * 256;
      const int mm = id / kSgdTile, cc = id % kSgdTile;
      const bool mok = m + mm < M;
      Gs[mm][cc] = (mok && n0 + cc < N) ? __ldg(G + (size_t)(m + mm) * N + n0 + cc) : 0.f;
      As[mm][cc] = (mok && k0 + cc < K) ? __ldg(A + (size_t)(m + mm) * K + k0 + cc) : 0.f;
    }
    __syncthreads();
    // rows past M are zero: fmaf(0, a, acc) == acc, so the m order matches the CPU exactly
#pragma unroll
    for (int mm = 0; mm < kSgdChunk; ++mm) {
      const float4 g = *(const float4*)&Gs[mm][ty * 4];
      const float4 a = *(const float4*)&As[mm][tx * 4];
      const float gv[4] = {g.x, g.y, g.z, g.w}, av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(gv[i], av[j], acc[i][j]);
    }
    __syncthreads();
  }

  const bool all = rho >= 1.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = n0 + ty * 4 + i;
    if (n >= N) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = k0 + tx * 4 + j;
      if (k >= K) continue;
      const size_t o = (size_t)n * K + k;
      const float keep = all ? 1.0f : (philox_keep(seed, (uint64_t)o, rho) ? 1.0f : 0.0f);
      const float w = Wp[o];
      // v = w − lr·(keep·g + wd·w), rounded step by step like the CPU (no FMA contraction)
      float v = __fsub_rn(w, __fmul_rn(lr, __fadd_rn(__fmul_rn(keep, acc[i][j]), __fmul_rn(wd, w))));
      if (clamp > 0) {
        const float base = wload<WT>(Wv, o);
        v = fminf(fmaxf(v, __fsub_rn(base, clamp)), __fadd_rn(base, clamp));
      }
      Wp[o] = v;
    }
  }
}

// ---- ties_merge ---------------------------------------------------------------------------------

struct TiesSel {
  unsigned long long remaining;  // rank (from the top, 1-based) still to locate; after the last pass: equals to keep
  unsigned long long tie_end;    // equal elements with index < tie_end are kept
  unsigned int thr;              // threshold bits (the prefix found so far)
  int need_tie;                  // the tie search must run (not every equal element is kept)
};

constexpr int kHistBins = 2048;  // the widest pass (11 bits)
constexpr int kSelBlock = 256;
constexpr int kTieChunk = 8192;  // elements per chunk of the equal-count scan (kSelBlock · 32)

__device__ __forceinline__ unsigned int mag_key(float shard, float base) {
  return __float_as_uint(fabsf(__fsub_rn(shard, base)));
}

// Exclusive block scan (kSelBlock threads) of unsigned long long; also returns the block total.
__device__ unsigned long long block_excl_scan(unsigned long long v, unsigned long long* total) {
  __shared__ unsigned long long warp_tot[kSelBlock / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned long long incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  __syncthreads();  // warp_tot may still be read by a previous call
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  unsigned long long off = 0, tot = 0;
  for (int w = 0; w < kSelBlock / 32; ++w) {
    if (w < warp) off += warp_tot[w];
    tot += warp_tot[w];
  }
  *total = tot;
  return off + incl - v;
}

template <typename WT>
__global__ void __launch_bounds__(256)
    ties_hist_kernel(unsigned long long* hist, const TiesSel* sel, const float* const* shards,
                     const typename WT::storage* base, size_t n, int shift, int bits) {
  __shared__ unsigned int h[kHistBins];
  const int s = blockIdx.y;
  const int nb = 1 << bits;
  for (int i = threadIdx.x; i < nb; i += blockDim.x) h[i] = 0;
  __syncthreads();
  const unsigned int prefix = sel[s].thr;
  const int hi = shift + bits;
  const float* sh = shards[s];
  for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < n; p += (size_t)gridDim.x * blockDim.x) {
    const unsigned int key = mag_key(__ldg(sh + p), wload<WT>(base, p));
    if (hi >= 32 || (key >> hi) == (prefix >> hi)) atomicAdd(&h[(key >> shift) & (unsigned)(nb - 1)], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nb; i += blockDim.x)
    if (h[i]) atomicAdd(hist + (size_t)s * kHistBins + i, (unsigned long long)h[i]);
}

// One block per shard: the digit of this pass that holds the remaining-th largest key.
__global__ void __launch_bounds__(kSelBlock)
    ties_select_kernel(const unsigned long long* hist, TiesSel* sel, int shift, int bits, bool last, size_t n) {
  const int s = blockIdx.x;
  const int nb = 1 << bits, per = nb / kSelBlock;
  const unsigned long long* hs = hist + (size_t)s * kHistBins;
  const unsigned long long rem = sel[s].remaining;
  // thread i owns digits top − i·per ... top − i·per − per + 1 (descending)
  const int dtop = nb - 1 - (int)threadIdx.x * per;
  unsigned long long sum = 0;
  for (int q = 0; q < per; ++q) sum += hs[dtop - q];
  unsigned long long total;
  const unsigned long long excl = block_excl_scan(sum, &total);
  if (excl < rem && rem <= excl + sum) {  // exactly one thread
    unsigned long long c = excl;
    for (int q = 0; q < per; ++q) {
      const int d = dtop - q;
      const unsigned long long cnt = hs[d];
      if (c + cnt >= rem) {
        const unsigned long long r = rem - c;  // 1-based rank among the elements with digit d
        TiesSel st = sel[s];
        st.thr |= (unsigned int)d << shift;
        st.remaining = r;
        if (last) {
          // cnt elements equal the threshold; r of them are kept (lowest indices first)
          st.need_tie = r < cnt ? 1 : 0;
          st.tie_end = r < cnt ? 0ull : (unsigned long long)n;
        }
        sel[s] = st;
        break;
      }
      c += cnt;
    }
  }
}

template <typename WT>
__global__ void __launch_bounds__(kSelBlock)
    ties_count_eq_kernel(unsigned int* cnt, const TiesSel* sel, const float* const* shards,
                         const typename WT::storage* base, size_t n, size_t nch) {
  const int s = blockIdx.y;
  if (!sel[s].need_tie) return;  // uniform over the block
  const unsigned int thr = sel[s].thr;
  const float* sh = shards[s];
  const size_t p0 = (size_t)blockIdx.x * kTieChunk, p1 = min(n, p0 + kTieChunk);
  unsigned int c = 0;
  for (size_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) c += mag_key(__ldg(sh + p), wload<WT>(base, p)) == thr;
  unsigned long long total;
  block_excl_scan(c, &total);
  if (threadIdx.x == 0) cnt[(size_t)s * nch + blockIdx.x] = (unsigned int)total;
}

// One block per shard: the index of the remaining-th element equal to the threshold, in index order.
template <typename WT>
__global__ void __launch_bounds__(kSelBlock)
    ties_find_tie_kernel(const unsigned int* cnt, TiesSel* sel, const float* const* shards,
                         const typename WT::storage* base, size_t n, size_t nch) {
  __shared__ unsigned long long s_chunk, s_rank;
  const int s = blockIdx.x;
  if (!sel[s].need_tie) return;
  const unsigned int thr = sel[s].thr;
  const unsigned long long rem = sel[s].remaining;
  const float* sh = shards[s];
  const unsigned int* cs = cnt + (size_t)s * nch;
  // (a) the chunk holding it
  const size_t per = (nch + kSelBlock - 1) / kSelBlock;
  const size_t c0 = min(nch, (size_t)threadIdx.x * per), c1 = min(nch, c0 + per);
  unsigned long long sum = 0;
  for (size_t c = c0; c < c1; ++c) sum += cs[c];
  unsigned long long total;
  unsigned long long excl = block_excl_scan(sum, &total);
  if (excl < rem && rem <= excl + sum) {
    unsigned long long acc = excl;
    for (size_t c = c0; c < c1; ++c) {
      if (acc + cs[c] >= rem) {
        s_chunk = c;
        s_rank = rem - acc;
        break;
      }
      acc += cs[c];
    }
  }
  __syncthreads();
  const size_t chunk = s_chunk;
  const unsigned long long rank = s_rank;
  // (b) the element inside the chunk: thread i scans 32 consecutive indices
  constexpr int kPer = kTieChunk / kSelBlock;
  const size_t p0 = chunk * kTieChunk + (size_t)threadIdx.x * kPer, p1 = min(n, p0 + kPer);
  unsigned long long c = 0;
  for (size_t p = p0; p < p1; ++p) c += mag_key(__ldg(sh + p), wload<WT>(base, p)) == thr;
  excl = block_excl_scan(c, &total);
  if (excl < rank && rank <= excl + c) {
    unsigned long long acc = excl;
    for (size_t p = p0; p < p1; ++p) {
      if (mag_key(__ldg(sh + p), wload<WT>(base, p)) == thr && ++acc == rank) {
        sel[s].tie_end = (unsigned long long)p + 1;
        break;
      }
    }
  }
}

template <typename WT>
__global__ void ties_merge_kernel(float* out, const typename WT::storage* base, const float* const* shards,
                                  const float* weights, const TiesSel* sel, int k, size_t n) {
  for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < n; p += (size_t)gridDim.x * blockDim.x) {
    const float bf = wload<WT>(base, p);
    const double b = bf;
    double sum = 0;
    for (int i = 0; i < k; ++i) {
      const float v = shards[i][p];
      const unsigned int key = mag_key(v, bf);
      const unsigned int thr = sel[i].thr;
      if (key > thr || (key == thr && p < sel[i].tie_end))
        sum = __dadd_rn(sum, __dmul_rn((double)weights[i], __dsub_rn((double)v, b)));
    }
    const bool pos = sum >= 0;
    double num = 0, den = 0;
    for (int i = 0; i < k; ++i) {
      const float v = shards[i][p];
      const unsigned int key = mag_key(v, bf);
      const unsigned int thr = sel[i].thr;
      if (!(key > thr || (key == thr && p < sel[i].tie_end))) continue;
      const double u = __dmul_rn((double)weights[i], __dsub_rn((double)v, b));
      if (u != 0 && (u > 0) == pos) {
        num = __dadd_rn(num, u);
        den = __dadd_rn(den, (double)weights[i]);
      }
    }
    out[p] = (float)__dadd_rn(b, __ddiv_rn(num, den == 0 ? 1.0 : den));
  }
}


}  // namespace

// ---- launchers (declared in cuda_backend.cu) -------------------------------------------------------

void act_dist_launch(cudaStream_t st, int /*sm_count*/, float* d, const float* os, const float* om, int n, int nm, int D, int act) {
  check_arg(n >= 0 && nm >= 0 && D >= 0, "act_dist", "negative size");
  check_arg(act >= 0 && act <= 2, "act_dist", "act must be 0, 1 or 2");
  const size_t tasks = (size_t)n * nm;
  if (tasks == 0) return;
  check_arg((tasks + kDistWarps - 1) / kDistWarps <= 0x7fffffffu, "act_dist", "too many rows for one launch");
  act_dist_kernel<<<(unsigned)((tasks + kDistWarps - 1) / kDistWarps), kDistWarps * 32, 0, st>>>(d, os, om, n, nm, D,
                                                                                                  act);
  RE_CUDA_LAUNCH("act_dist");
}

void act_dist_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dos, const float* gd, const float* os, const float* om, int n, int D,
                       int act, bool accumulate) {
  check_arg(n >= 0 && D >= 0, "act_dist_bwd", "negative size");
  check_arg(act >= 0 && act <= 2, "act_dist_bwd", "act must be 0, 1 or 2");
  if ((size_t)n * D == 0) return;
  const int block = D >= kDistBwdBlock ? kDistBwdBlock : ((D + 31) / 32) * 32;
  act_dist_bwd_kernel<<<(unsigned)n, block, 0, st>>>(dos, gd, os, om, D, act, accumulate);
  RE_CUDA_LAUNCH("act_dist_bwd");
}

void masked_sgd_launch(cudaStream_t st, int /*sm_count*/, float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K,
                     uint64_t seed, float rho, float lr, float wd, float clamp) {
  check_arg(M >= 0 && N >= 0 && K >= 0, "masked_sgd", "negative size");
  check_arg(Wv.p != nullptr || clamp <= 0 || (size_t)N * K == 0, "masked_sgd", "null base weight");
  check_arg((N + kSgdTile - 1) / kSgdTile <= 65535, "masked_sgd", "N too large for one launch");
  if ((size_t)N * K == 0) return;
  const dim3 grid((unsigned)((K + kSgdTile - 1) / kSgdTile), (unsigned)((N + kSgdTile - 1) / kSgdTile));
  dispatch_dtype(Wv.dt, [&](auto wt) {
    using WT = decltype(wt);
    masked_sgd_kernel<WT><<<grid, 256, 0, st>>>(Wp, G, A, (const typename WT::storage*)Wv.p, M, N, K, seed, rho, lr,
                                                wd, clamp);
  });
  RE_CUDA_LAUNCH("masked_sgd");
}

void ties_merge_launch(cudaStream_t st, int sm_count, float* out, WeightRef base, const float* const* shards,
                     const float* weights, int k, size_t n, float density) {
  check_arg(k >= 0 && k <= 65535, "ties_merge", "k must be in 0..65535");
  check_arg(base.p != nullptr || n == 0, "ties_merge", "null base");
  check_arg(k == 0 || (shards != nullptr && weights != nullptr), "ties_merge", "null shard/weight array");
  if (n == 0) return;
  for (int i = 0; i < k; ++i) check_arg(shards[i] != nullptr, "ties_merge", "null shard");
  const size_t K = (size_t)std::floor((double)density * (double)n);  // the CPU's formula
  const bool select = K > 0 && K < n;
  const size_t nch = (n + kTieChunk - 1) / kTieChunk;
  check_arg(nch <= 0x7fffffffu, "ties_merge", "too many elements");

  // scratch layout: [shard pointers][weights][select state] (uploaded) | [histograms] | [equal counts]
  const size_t kk = (size_t)std::max(k, 1);
  const size_t o_w = align_up(kk * sizeof(float*), 16);
  const size_t o_sel = align_up(o_w + kk * sizeof(float), 16);
  const size_t o_hist = align_up(o_sel + kk * sizeof(TiesSel), 16);
  const size_t o_cnt = o_hist + (select ? kk * kHistBins * sizeof(unsigned long long) : 0);
  const size_t bytes = o_cnt + (select ? kk * nch * sizeof(unsigned int) : 0);
  std::vector<char> host(o_hist, 0);
  for (int i = 0; i < k; ++i) {
    std::memcpy(host.data() + i * sizeof(float*), &shards[i], sizeof(float*));
    std::memcpy(host.data() + o_w + i * sizeof(float), &weights[i], sizeof(float));
    TiesSel sl{};
    if (K == 0) {  // keep nothing
      sl.thr = 0xFFFFFFFFu;
      sl.tie_end = 0;
    } else if (K >= n) {  // keep everything
      sl.thr = 0;
      sl.tie_end = n;
    } else {
      sl.thr = 0;
      sl.remaining = K;
    }
    std::memcpy(host.data() + o_sel + i * sizeof(TiesSel), &sl, sizeof(TiesSel));
  }
  Scratch scratch(st, bytes);
  char* dev = scratch.bytes();
  // pageable source: the call returns once the bytes are staged, so `host` may go out of scope
  RE_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), o_hist, cudaMemcpyHostToDevice, st));
  const float* const* dptrs = (const float* const*)dev;
  const float* dw = (const float*)(dev + o_w);
  TiesSel* dsel = (TiesSel*)(dev + o_sel);
  unsigned long long* dhist = (unsigned long long*)(dev + o_hist);
  unsigned int* dcnt = (unsigned int*)(dev + o_cnt);

  dispatch_dtype(base.dt, [&](auto wt) {
    using WT = decltype(wt);
    const auto* bp = (const typename WT::storage*)base.p;
    if (select && k > 0) {
      const unsigned gx = std::max(
          1u, std::min(grid_for(n, 256), (unsigned)std::max(1, 4 * std::max(sm_count, 1) / std::max(k, 1))));
      const int passes[3][2] = {{21, 11}, {10, 11}, {0, 10}};  // (shift, bits): 32 bits, high to low
      for (int ps = 0; ps < 3; ++ps) {
        RE_CUDA_CHECK(cudaMemsetAsync(dhist, 0, (size_t)k * kHistBins * sizeof(unsigned long long), st));
        ties_hist_kernel<WT><<<dim3(gx, (unsigned)k), 256, 0, st>>>(dhist, dsel, dptrs, bp, n, passes[ps][0],
                                                                    passes[ps][1]);
        RE_CUDA_LAUNCH("ties_merge (histogram)");
        ties_select_kernel<<<(unsigned)k, kSelBlock, 0, st>>>(dhist, dsel, passes[ps][0], passes[ps][1], ps == 2, n);
        RE_CUDA_LAUNCH("ties_merge (select)");
      }
      ties_count_eq_kernel<WT><<<dim3((unsigned)nch, (unsigned)k), kSelBlock, 0, st>>>(dcnt, dsel, dptrs, bp, n, nch);
      RE_CUDA_LAUNCH("ties_merge (count ties)");
      ties_find_tie_kernel<WT><<<(unsigned)k, kSelBlock, 0, st>>>(dcnt, dsel, dptrs, bp, n, nch);
      RE_CUDA_LAUNCH("ties_merge (find tie)");
    }
    ties_merge_kernel<WT><<<grid_for(n, 256), 256, 0, st>>>(out, bp, dptrs, dw, dsel, k, n);
    RE_CUDA_LAUNCH("ties_merge");
  });
}

}  // namespace cuda
}  // namespace re
