// isa.h — the CPU backend's hot inner loops, compiled once per x86-64 ISA level and chosen at run
// time by us (cpu/isa.cpp), not by ifunc/target_clones: g++ 12's "arch=haswell" clones dispatch on
// the CPU *model* and ran the scalar clone on AMD CPUs with AVX2 (TOOLCHAIN.md pitfall 13).
//
// Levels: "x86-64" (SSE2 baseline), "x86-64-v3" (AVX2 + FMA + F16C), "x86-64-v4" (AVX-512 F/BW/DQ/VL).
// cpu/kernels.inc holds one source for every level; cpu/kernels_<level>.cpp compiles it with that
// level's -march (CMakeLists.txt). The best level the CPU supports is used unless REPAIR_CPU_ISA
// (baseline | v3 | v4) or an explicit argument forces one; a level the CPU lacks is refused with
// ERR_UNSUPPORTED_CPU. Kernels take raw pointers and caller-owned scratch: no std templates are
// instantiated in the per-level translation units (their weak copies would otherwise be shared
// with baseline code by the linker and could run AVX-512 code on a CPU without it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace re {

enum class CpuIsa : int { baseline = 0, v3 = 1, v4 = 2 };

struct CpuKernels {
  CpuIsa isa;
  const char* name;  // "x86-64" | "x86-64-v3" | "x86-64-v4"
  int vec_bits;      // SIMD register width the kernels use: 128 / 256 / 512
  int gemm_mr, gemm_nr;  // packed-GEMM micro-tile (rows of X × columns of one packed panel)

  // GEMM micro-kernels (cpu/matmul.cpp's packed GEMM, behind linear, linear_dx and masked_sgd):
  // tile[i*ldt + j] += Σ_k xp[i/mr][k][i%mr] · wp[j/nr][k][j%nr]   for i < mb, j < nv·nr, k < kc
  // (X and W both packed: X as [ceil(mb/mr)][kc][mr], W as [nv][kc][nr], zero-filled past the edges)
  void (*gemm_block)(const float* xp, int mb, const float* wp, int nv, int kc, float* tile, int ldt);
  // tile[i*ldt + j] += Σ_k x[i*ldx + k] · w[j*ldw + k]   for i < mb, j < nb, k < L   (GEMV-like, M < 8)
  void (*dot_block)(const float* x, size_t ldx, int mb, const float* w, size_t ldw, int nb, int L, float* tile,
                    int ldt);

  // Elementwise (cpu/elementwise.cpp, cpu/backward.cpp): y = silu(g)·u and its input gradients, over n elements.
  void (*swiglu)(float* y, const float* g, const float* u, size_t n);
  void (*swiglu_bwd)(float* dg, float* du, const float* dy, const float* g, const float* u, size_t n);

  // Row kernels of the norms (w already widened to f32).
  void (*rmsnorm_row)(float* y, const float* x, const float* w, int D, float eps);
  void (*rmsnorm_bwd_row)(float* dx, const float* dy, const float* x, const float* w, int D, float eps, bool acc);

  // Attention, one (sequence, token, head) output row over cache rows j0..i; scratch: sc[i-j0+1], acc[hd].
  void (*attn_row)(float* o, const float* q, const float* kb, const float* vb, int j0, int i, int hd, float scale,
                   double* sc, double* acc);
  // Attention, every query row of one (sequence, kv head): query heads h0..h0+group-1 of Tn tokens at
  // cache rows P..P+Tn-1; q/o rows [Tn][Hq][hd] (stride qs); kb/vb the group's cache rows [P+Tn][hd].
  // Scratch: kt [hd·(P+Tn)] floats, sc [P+Tn] and acc [hd] doubles.
  void (*attn_group)(float* o, const float* q, const float* kb, const float* vb, int j0, int P, int Tn, int h0,
                     int group, int hd, size_t qs, float scale, float* kt, double* sc, double* acc);
  // Attention backward for one (sequence, kv head): query heads h0..h0+group-1, T tokens; q/dout/dq
  // rows are [T][Hq][hd] (stride qs = Hq·hd between tokens), kb/vb [T][hd]; writes dk/dv rows with
  // stride ks = Hkv·hd. Scratch: dkg, dvg [T·hd], p, dp [T], dqa [hd] doubles; kt, vt [hd·T] floats.
  void (*attn_bwd_group)(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kb,
                         const float* vb, int j0, int T, int h0, int group, int hd, size_t qs, size_t ks, float scale,
                         double* dkg, double* dvg, double* p, double* dp, double* dqa, float* kt, float* vt);

  // Cross-entropy of one row: loss = (lse − z[y])·w, g = (softmax(z) − onehot(y))·w.
  void (*ce_row)(float* loss, float* g, const float* z, int y, int V, float w);
  // WISE activation distance ‖act(a) − act(b)‖ over D (act: 0 identity, 1 SiLU, 2 GELU-tanh) and its gradient.
  double (*act_dist_row)(const float* a, const float* b, int D, int act);
  void (*act_dist_bwd_row)(float* o, const float* a, const float* b, int D, int act, float gd, bool acc);

  // Load-time weight check: whether any of n elements (raw bits) has (bits & mask) >= thr.
  bool (*any_exp_ge32)(const uint8_t* p, uint64_t n, uint32_t mask, uint32_t thr);
  bool (*any_exp_ge16)(const uint8_t* p, uint64_t n, uint16_t mask, uint16_t thr);
};

const char* cpu_isa_name(CpuIsa isa);
// The best level this CPU (and OS) supports.
CpuIsa cpu_isa_detected();
// Whether this CPU supports `isa`.
bool cpu_isa_supported(CpuIsa isa);
// Parses "baseline" | "x86-64" | "v3" | "x86-64-v3" | "v4" | "x86-64-v4" (ERR_INVALID_ARG otherwise).
CpuIsa cpu_isa_parse(const std::string& s);
// The level to use: `forced` when non-empty, else REPAIR_CPU_ISA when set, else the detected one.
// ERR_UNSUPPORTED_CPU when the chosen level is not supported here.
CpuIsa cpu_isa_choose(const std::string& forced);
const CpuKernels& cpu_kernels(CpuIsa isa);

}  // namespace re
