// CUDA-vs-CPU error bounds of the forward ops (max-norm relative error of one op's output: max|cuda − cpu| /
// max|cpu|), shared by the forward families' op tests (test/ops_matmul, ops_norm, ops_rope, ops_attention,
// ops_elementwise .test.ts), which enforce them op by op, and test/parity.test.ts, which derives its whole-model
// logit tolerance from them (so the two cannot drift apart).
export const TOL_CUDA = {
  // F32 weights: SIMT / GEMV f32 FMA chains in another order than the CPU: ~1e-6 in practice.
  linear_F32: 2e-5,
  // F16/BF16 weights: GEMV (M <= 8) is plain f32; the tensor-core path (M > 8) runs TF32 MMAs with the
  // activations split hi+lo (~2⁻²² relative per activation; weights exact in TF32) and f32
  // accumulation whose per-step alignment truncates (Fasi et al., 2021): ~1e-6..1e-5. A path that
  // rounded activations to bf16 would land near 4e-3 and fail this bound on purpose.
  linear_16: 5e-5,
  rmsnorm: 5e-6, // f32 tree sum of squares vs the CPU's f64 sum
  rope: 4e-6, // device sincosf (<= 2 ulp incl. large θ) vs f64 cos/sin rounded
  attention: 2e-5, // f32 online softmax (expf, f32 accumulation over up to S keys) vs f64 two-pass
  swiglu: 4e-6, // expf vs f64 exp
} as const;

/**
 * Relative (max-norm) bound on a LLaMA-family model's logits on CUDA vs the CPU, from the op bounds above, for a
 * model with `layers` decoder layers and weights in `dtype`. First-order error propagation: each op's output error
 * is its own bound plus the relative error it inherits, with unit gain (RMSNorm re-normalises every sub-layer's
 * input, so relative errors add along the chain instead of compounding). The chain of one layer is
 * rmsnorm → q/k/v linear → rope → attention → o linear → (+ residual) → rmsnorm → gate/up linear → swiglu → down linear,
 * i.e. 4 linears on the critical path; then the final rmsnorm and the lm_head. The op bounds themselves hold ~10×
 * margin over the errors the op tests measure, which covers the unit-gain assumption.
 */
export function llamaLogitBound(layers: number, dtype: 'F32' | 'F16' | 'BF16'): number {
  const lin = dtype === 'F32' ? TOL_CUDA.linear_F32 : TOL_CUDA.linear_16;
  const perLayer = 4 * lin + 2 * TOL_CUDA.rmsnorm + TOL_CUDA.rope + TOL_CUDA.attention + TOL_CUDA.swiglu;
  return layers * perLayer + TOL_CUDA.rmsnorm + lin;
}
