// optest.h — run one backend op on host inputs, for the CPU-vs-CUDA op tests (test/ops*.test.ts).
// Inputs are copied to the backend, the op runs, outputs come back. Every output buffer is
// allocated with a guard region (a sentinel bit pattern) on both sides; guard_ok reports whether
// the op left them untouched (catches out-of-bounds writes).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "backend.h"

namespace re {

struct OpArgs {
  std::map<std::string, std::vector<float>> f32;     // Float32Array arguments
  std::map<std::string, std::vector<int32_t>> i32;   // Int32Array arguments
  std::map<std::string, std::vector<uint16_t>> u16;  // Uint16Array arguments (f16/bf16 weight bits)
  std::map<std::string, double> num;                 // numbers (shapes, eps, scale, flags)
  std::map<std::string, std::string> str;            // strings (e.g. weight dtype "F32"|"F16"|"BF16")
};

struct OpResult {
  std::map<std::string, std::vector<float>> out;
  bool guard_ok = true;
};

// Throws re::Error(ERR_INVALID_ARG) on an unknown op or missing/mis-sized argument.
OpResult run_op(Backend& be, const std::string& op, const OpArgs& args);

// Names of the ops run_op knows: the ops of ops.def, in its order (test/op_list.test.ts checks them).
std::vector<std::string> op_names();

}  // namespace re
