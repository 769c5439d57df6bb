// matmul.cpp — CPU linear: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]), W in F32/F16/BF16 (twin: cuda/matmul.cu), and
// the packed GEMM (gemm_packed, packed_b) that linear_dx (backward.cpp) and masked_sgd (wise.cpp) also run on.
//
// Two paths, both split into output tiles across the thread pool:
//  - GEMM (M >= 8): BLIS-style. A 64-row slab of W is packed (and widened from f16/bf16) into
//    [64/nr][kc][nr] panels for each K chunk; a 6×nr register-blocked outer-product kernel broadcasts
//    x and accumulates into a (96 × 64) tile that stays in L1/L2.
//  - GEMV-like (M < 8, decode): W rows are streamed once; 2×4 dot products at a time with 8-wide
//    vectors, so the weight bytes are read exactly once.
// The micro-kernels (cpu/kernels.inc) come from the backend's ISA table: 6×16 on AVX2 (two ymm per
// row, 12 accumulators), 6×32 on AVX-512, 6×8 on SSE2; panels are packed nr columns wide.
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/isa.h"
#include "philox.h"

namespace re {

namespace {

constexpr int MB = 64, NB = 64, KC = 512;          // dot path tiles
constexpr int PMB = 96, PNB = kGemmTileN, PKC = 256;  // packed GEMM tiles (PMB multiple of 6, PNB of PG)
constexpr int PG = 64;                             // columns of B packed per pack() call (a multiple of every nr)

// Pack W rows [n0, n0+nb) × cols [k0, k0+kc) as [ceil(nb/nr)][kc][nr] f32 (zero-filled past nb).
void pack_w(float* dst, int nr, WeightRef W, int K, int n0, int nb, int k0, int kc) {
  const int nv = (nb + nr - 1) / nr;
  float row[PKC];
  for (int jv = 0; jv < nv; ++jv)
    for (int jj = 0; jj < nr; ++jj) {
      const int j = jv * nr + jj;
      float* d = dst + (size_t)jv * kc * nr + jj;
      if (j < nb) {
        const float* src = row;
        if (W.dt == DType::F32) src = static_cast<const float*>(W.p) + (size_t)(n0 + j) * K + k0;
        else weight_row_to_f32(row, W, (size_t)(n0 + j) * K + k0, kc);
        for (int k = 0; k < kc; ++k) d[(size_t)k * nr] = src[k];
      } else {
        for (int k = 0; k < kc; ++k) d[(size_t)k * nr] = 0.0f;
      }
    }
}

}  // namespace

// Pack B[k][j] = src[(k0 + k)·ld + n0 + j] (a row-major [K, N] operand read along its rows) as
// [ceil(nb/nr)][kc][nr] f32, zero-filled past nb. Used when the reduction index is the row index.
void gemm_pack_rows(float* dst, int nr, WeightRef src, size_t ld, int n0, int nb, int k0, int kc) {
  const int nv = (nb + nr - 1) / nr;
  float row[PG];
  for (int k = 0; k < kc; ++k) {
    const float* r = row;
    if (src.dt == DType::F32) r = static_cast<const float*>(src.p) + (size_t)(k0 + k) * ld + n0;
    else weight_row_to_f32(row, src, (size_t)(k0 + k) * ld + n0, nb);
    for (int jv = 0; jv < nv; ++jv) {
      float* d = dst + ((size_t)jv * kc + k) * nr;
      const int jn = std::min(nr, nb - jv * nr);
      std::memcpy(d, r + jv * nr, (size_t)jn * 4);
      for (int jj = jn; jj < nr; ++jj) d[jj] = 0.0f;
    }
  }
}

namespace {

// Pack X rows [0, mb) × cols [0, kc) as [ceil(mb/mr)][kc][mr], zero-filled past mb. X is row-major with
// row stride ldx, or (trans) stored transposed: X[i][k] = x[k·ldx + i] (masked_sgd's Gᵀ, never formed).
void pack_x(float* dst, int mr, const float* x, size_t ldx, int mb, int kc, bool trans) {
  for (int i0 = 0; i0 < mb; i0 += mr) {
    float* d = dst + (size_t)i0 * kc;
    const int ib = std::min(mr, mb - i0);
    if (trans) {
      for (int k = 0; k < kc; ++k) {
        const float* xr = x + (size_t)k * ldx + i0;
        float* dk = d + (size_t)k * mr;
        for (int i = 0; i < ib; ++i) dk[i] = xr[i];
        for (int i = ib; i < mr; ++i) dk[i] = 0.0f;
      }
    } else if (ib == mr && mr == 6) {
      const float *x0 = x + (size_t)i0 * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx, *x4 = x3 + ldx, *x5 = x4 + ldx;
      for (int k = 0; k < kc; ++k) {
        float* dk = d + (size_t)k * 6;
        dk[0] = x0[k], dk[1] = x1[k], dk[2] = x2[k], dk[3] = x3[k], dk[4] = x4[k], dk[5] = x5[k];
      }
    } else {
      for (int k = 0; k < kc; ++k) {
        float* dk = d + (size_t)k * mr;
        for (int i = 0; i < ib; ++i) dk[i] = x[(size_t)(i0 + i) * ldx + k];
        for (int i = ib; i < mr; ++i) dk[i] = 0.0f;
      }
    }
  }
}

}  // namespace

float* CpuBackend::HugeBuf::get(size_t count) {
  if (count <= n) return p;
  const size_t huge = (size_t)2 << 20, bytes = (count * 4 + huge - 1) / huge * huge;
  void* q = nullptr;
  if (posix_memalign(&q, huge, bytes) != 0 || !q) fail(RE_ERR_OOM, "CPU backend: out of host memory for GEMM packing");
#ifdef MADV_HUGEPAGE
  madvise(q, bytes, MADV_HUGEPAGE);
#endif
  std::free(p);
  p = static_cast<float*>(q);
  n = bytes / 4;
  return p;
}
CpuBackend::HugeBuf::~HugeBuf() { std::free(p); }

// C[M, N] = X[M, K] · B[K, N], BLIS-style: the operands are packed once per (MC × NC) chunk — X into
// [K/PKC][MC/mr][kc][mr] micro-panels, B (through `pack`, 64 columns at a time) into [K/PKC][NC/nr][kc][nr]
// panels — in one parallel pass, then (PMB × PNB) output tiles are computed over the pool, each over the
// whole K in PKC steps, and handed to `epi`. Packing each operand once (not once per tile) keeps its
// cost at (1/N + 1/M) of the multiply-adds; it was as slow as the arithmetic with per-tile packing.
constexpr size_t kChunkFloats = (size_t)1 << 21;  // floats per packed operand chunk (8 MiB)

// The N-chunk width for a reduction length K (also fixes the layout of a whole packed B, packed_b()).
static int chunk_nc(int N, int K) {
  return std::max(PNB, (int)std::min<size_t>((size_t)(N + PG - 1) / PG * PG, kChunkFloats / std::max(K, 1) / PNB * PNB));
}

// B packed whole, as gemm_packed lays out each N chunk ([nk][ncp][kc][nr] at offset nc0·K), kept per
// frozen weight (key: pointer, layout, shape, nr) up to 256 MiB in all: a model's weights are then
// packed once, not at every call (the edit hot path multiplies by the same suffix weights each step).
const float* CpuBackend::packed_b(const void* key, int layout, int N, int K, const PackFn& pack) {
  const int nr = k_->gemm_nr;
  const PackKey pk{key, layout, N, K, nr};
  std::lock_guard<std::mutex> lk(packed_mu_);
  auto it = packed_.find(pk);
  if (it != packed_.end()) return it->second.data();
  const int NC = chunk_nc(N, K), nk = (K + PKC - 1) / PKC;
  size_t total = 0;
  for (int nc0 = 0; nc0 < N; nc0 += NC) total += (size_t)(std::min(NC, N - nc0) + PG - 1) / PG * PG * K;
  if (packed_bytes_ + total * 4 > ((size_t)256 << 20)) return nullptr;  // over budget: pack per call
  std::vector<float> buf(total + 64);
  for (int nc0 = 0; nc0 < N; nc0 += NC) {
    const int ncb = std::min(NC, N - nc0), ncp = (ncb + PG - 1) / PG * PG, ngb = (ncb + PG - 1) / PG;
    float* pb = buf.data() + (size_t)nc0 * K;
    pool_.parallel_for(ngb * nk, [&](int t) {
      const int c = t / ngb, g0 = (t % ngb) * PG, k0 = c * PKC, kc = std::min(PKC, K - k0);
      pack(pb + (size_t)c * ncp * PKC + (size_t)g0 * kc, nc0 + g0, std::min(PG, ncb - g0), k0, kc);
    }, (double)ncb * K * 4);
  }
  packed_bytes_ += total * 4;
  const size_t now = in_use_ += total * 4;  // counted as backend memory (memoryBytes / memoryPeakBytes)
  size_t pkm = peak_.load();
  while (now > pkm && !peak_.compare_exchange_weak(pkm, now)) {
  }
  return packed_.emplace(pk, std::move(buf)).first->second.data();
}

void CpuBackend::gemm_packed(int M, int N, int K, const float* X, size_t ldx, const PackFn& pack, const EpiFn& epi,
                             bool x_trans, const float* b_packed) {
  if (M <= 0 || N <= 0) return;
  std::lock_guard<std::mutex> lk(gemm_mu_);
  const int mr = k_->gemm_mr, nr = k_->gemm_nr;
  const int nk = (K + PKC - 1) / PKC;
  const int Kp = std::max(K, 1);
  const int MC = std::max(PMB, (int)std::min<size_t>((size_t)(M + PMB - 1) / PMB * PMB, kChunkFloats / Kp / PMB * PMB));
  const int NC = chunk_nc(N, K);
  float* pa = nullptr;  // the shared X chunk: only the wide-output path below packs X once for all tasks
  float* pb = b_packed ? nullptr : pb_.get((size_t)NC * Kp + 64);
  for (int mc0 = 0; mc0 < M; mc0 += MC) {
    const int mcb = std::min(MC, M - mc0), mcp = (mcb + mr - 1) / mr * mr;  // rows, padded to mr
    for (int nc0 = 0; nc0 < N; nc0 += NC) {
      const int ncb = std::min(NC, N - nc0);
      const int ncp = (ncb + PG - 1) / PG * PG;  // columns, padded to whole pack groups
      const int mta = (mcb + PMB - 1) / PMB, ntb = (ncb + PNB - 1) / PNB, ngb = (ncb + PG - 1) / PG;
      if (b_packed) pb = const_cast<float*>(b_packed) + (size_t)nc0 * K;  // read only
      auto pack_b = [&](int t) {
        const int c = t / ngb, g0 = (t % ngb) * PG, k0 = c * PKC, kc = std::min(PKC, K - k0);
        pack(pb + (size_t)c * ncp * PKC + (size_t)g0 * kc, nc0 + g0, std::min(PG, ncb - g0), k0, kc);
      };
      if (ntb <= 2) {
        // Narrow output (the edit step's shapes): one pool round. B is packed here by the caller when it
        // is small (or was packed before), and each task packs its own X rows; waking the pool twice
        // per GEMM cost more than the second thread saved at these sizes.
        if (!b_packed) {
          if ((size_t)ncb * K <= ((size_t)1 << 18)) {
            for (int t = 0; t < ngb * nk; ++t) pack_b(t);
          } else {
            pool_.parallel_for(ngb * nk, pack_b, (double)ncb * K * 4);
          }
        }
        pool_.parallel_for(mta * ntb, [&](int task) {
          const int m0 = (task % mta) * PMB, n0 = (task / mta) * PNB;
          const int mb = std::min(PMB, mcb - m0), nb = std::min(PNB, ncb - n0), nv = (nb + nr - 1) / nr;
          alignas(64) float tile[PMB * PNB];
          std::fill(tile, tile + (size_t)mb * PNB, 0.0f);
          thread_local std::vector<float> xb;
          xb.resize((size_t)(PMB + 8) * PKC);
          for (int c = 0; c < nk; ++c) {
            const int k0 = c * PKC, kc = std::min(PKC, K - k0);
            const float* xs = x_trans ? X + (size_t)k0 * ldx + (mc0 + m0) : X + (size_t)(mc0 + m0) * ldx + k0;
            pack_x(xb.data(), mr, xs, ldx, mb, kc, x_trans);
            k_->gemm_block(xb.data(), mb, pb + (size_t)c * ncp * PKC + (size_t)n0 * kc, nv, kc, tile, PNB);
          }
          epi(tile, PNB, mc0 + m0, mb, nc0 + n0, nb);
        }, (double)mcb * ncb * K);
        continue;
      }
      // Pack: tasks [0, na) are X blocks of PMB rows × one K step, [na, na+nb) B groups of PG columns × one K step.
      if (!pa) pa = pa_.get((size_t)MC * Kp + 64);
      const int na = mta * nk, nbt = b_packed ? 0 : ngb * nk;
      pool_.parallel_for(na + nbt, [&](int task) {
        if (task < na) {
          const int c = task / mta, r0 = (task % mta) * PMB, k0 = c * PKC, kc = std::min(PKC, K - k0);
          float* dst = pa + (size_t)c * mcp * PKC + (size_t)r0 * kc;
          const float* xs = x_trans ? X + (size_t)k0 * ldx + (mc0 + r0) : X + (size_t)(mc0 + r0) * ldx + k0;
          pack_x(dst, mr, xs, ldx, std::min(PMB, mcb - r0), kc, x_trans);
        } else {
          pack_b(task - na);
        }
      }, (double)(mcb + ncb) * K * 4);
      // Multiply: one (PMB × PNB) tile per task, neighbouring tasks share the B panel.
      pool_.parallel_for(mta * ntb, [&](int task) {
        const int m0 = (task % mta) * PMB, n0 = (task / mta) * PNB;
        const int mb = std::min(PMB, mcb - m0), nb = std::min(PNB, ncb - n0), nv = (nb + nr - 1) / nr;
        alignas(64) float tile[PMB * PNB];
        std::fill(tile, tile + (size_t)mb * PNB, 0.0f);
        for (int c = 0; c < nk; ++c) {
          const int kc = std::min(PKC, K - c * PKC);
          k_->gemm_block(pa + (size_t)c * mcp * PKC + (size_t)m0 * kc, mb, pb + (size_t)c * ncp * PKC + (size_t)n0 * kc, nv,
                         kc, tile, PNB);
        }
        epi(tile, PNB, mc0 + m0, mb, nc0 + n0, nb);
      }, (double)mcb * ncb * K);
    }
  }
}

void CpuBackend::linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  std::vector<float> bf;
  if (bias.p) {
    bf.resize(N);
    weight_row_to_f32(bf.data(), bias, 0, N);
  }
  EpiFn finish = [&](const float* tile, int ldt, int m0, int mb, int n0, int nb) {
    for (int i = 0; i < mb; ++i) {
      float* yr = y + (size_t)(m0 + i) * N + n0;
      const float* tr = tile + (size_t)i * ldt;
      if (bias.p) {
        const float* br = bf.data() + n0;
        if (accumulate)
          for (int j = 0; j < nb; ++j) yr[j] += tr[j] + br[j];
        else
          for (int j = 0; j < nb; ++j) yr[j] = tr[j] + br[j];
      } else if (accumulate) {
        for (int j = 0; j < nb; ++j) yr[j] += tr[j];
      } else {
        std::memcpy(yr, tr, (size_t)nb * 4);
      }
    }
  };
  if (M >= 8) {
    const PackFn pack = [&](float* wp, int n0, int nb, int k0, int kc) { pack_w(wp, k_->gemm_nr, W, K, n0, nb, k0, kc); };
    const float* bp = W.frozen ? packed_b(W.p, 0, N, K, pack) : nullptr;
    gemm_packed(M, N, K, x, (size_t)K, pack, finish, false, bp);
    return;
  }
  const int mt = (M + MB - 1) / MB, nt = (N + NB - 1) / NB;
  pool_.parallel_for(mt * nt, [&](int task) {
    const int m0 = (task / nt) * MB, n0 = (task % nt) * NB;
    const int mb = std::min(MB, M - m0), nb = std::min(NB, N - n0);
    float tile[MB * NB];
    std::fill(tile, tile + mb * NB, 0.0f);
    thread_local std::vector<float> panel;
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kl = std::min(KC, K - k0);
      const float* wp;
      size_t ldw;
      if (W.dt == DType::F32) {
        wp = static_cast<const float*>(W.p) + (size_t)n0 * K + k0;
        ldw = (size_t)K;
      } else {
        panel.resize((size_t)NB * KC);
        for (int j = 0; j < nb; ++j) weight_row_to_f32(panel.data() + (size_t)j * KC, W, (size_t)(n0 + j) * K + k0, kl);
        wp = panel.data();
        ldw = KC;
      }
      k_->dot_block(x + (size_t)m0 * K + k0, (size_t)K, mb, wp, ldw, nb, kl, tile, NB);
    }
    for (int i = 0; i < mb; ++i) {
      float* yr = y + (size_t)(m0 + i) * N + n0;
      const float* tr = tile + i * NB;
      for (int j = 0; j < nb; ++j) {
        float v = tr[j];
        if (bias.p) v += weight_at(bias, (size_t)(n0 + j));
        yr[j] = accumulate ? yr[j] + v : v;
      }
    }
  }, (double)M * N * K);
}

}  // namespace re
