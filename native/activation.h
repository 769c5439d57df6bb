// activation.h — the activation functions and their derivatives, once, for host and device (the pattern of
// philox.h): SiLU (SwiGLU's gate, WISE's φ in "code" mode for Llama), GELU in the tanh form (HF gelu_new: GPT-2's
// MLP, φ for GPT-2), and the WISE activation-score φ selected by `act` (0 identity, 1 SiLU, 2 GELU-tanh).
// All in double. The transcendental functions come from a Math policy: Libm (std / CUDA device exp, tanh) by
// default; the CPU kernels (cpu/kernels.inc) pass their vectorisable exp_d / tanh_d, so one formula serves the
// reference, every ISA level and CUDA.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define RE_ACT_HD __host__ __device__ __forceinline__
#else
#define RE_ACT_HD inline
#endif

namespace re {
namespace act {

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;

struct Libm {
  static RE_ACT_HD double exp(double x) { return ::exp(x); }
  static RE_ACT_HD double tanh(double x) { return ::tanh(x); }
};

template <class M = Libm> RE_ACT_HD double sigmoid(double x) { return 1.0 / (1.0 + M::exp(-x)); }
// silu(x) = x·σ(x)
template <class M = Libm> RE_ACT_HD double silu(double x) { return x * sigmoid<M>(x); }
// silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
template <class M = Libm> RE_ACT_HD double silu_grad(double x) {
  const double s = sigmoid<M>(x);
  return s * (1.0 + x * (1.0 - s));
}
// gelu(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
template <class M = Libm> RE_ACT_HD double gelu(double x) {
  return 0.5 * x * (1.0 + M::tanh(kGeluC * (x + kGeluA * x * x * x)));
}
// gelu'(x) = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²),  t = tanh(√(2/π)·(x + 0.044715·x³))
template <class M = Libm> RE_ACT_HD double gelu_grad(double x) {
  const double t = M::tanh(kGeluC * (x + kGeluA * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kGeluC * (1.0 + 3.0 * kGeluA * x * x);
}

// WISE's φ (act_dist): 0 identity, 1 SiLU, 2 GELU-tanh; and its derivative.
template <class M = Libm> RE_ACT_HD double phi(double x, int a) {
  return a == 1 ? silu<M>(x) : a == 2 ? gelu<M>(x) : x;
}
template <class M = Libm> RE_ACT_HD double phi_grad(double x, int a) {
  return a == 1 ? silu_grad<M>(x) : a == 2 ? gelu_grad<M>(x) : 1.0;
}

}  // namespace act
}  // namespace re
