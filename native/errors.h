// errors.h — the one error type of the native layer. Thrown, caught at the binding boundary, and
// turned into a JS Error whose `code` is the string below. Native code never exits or aborts.
#pragma once
#include <atomic>
#include <stdexcept>
#include <string>

namespace re {

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& msg) : std::runtime_error(msg), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

// Codes used across the native layer (the TS layer uses the same strings).
#define RE_ERR_ARG "ERR_INVALID_ARG"
#define RE_ERR_OOM "ERR_OOM"
#define RE_ERR_CUDA "ERR_CUDA"
#define RE_ERR_CUDA_UNAVAILABLE "ERR_CUDA_UNAVAILABLE"
#define RE_ERR_SAFETENSORS "ERR_SAFETENSORS"
#define RE_ERR_IO "ERR_IO"
#define RE_ERR_DISPOSED "ERR_DISPOSED"
#define RE_ERR_ABORTED "ERR_ABORTED"
#define RE_ERR_CONTEXT "ERR_CONTEXT_LENGTH"
#define RE_ERR_INTERNAL "ERR_INTERNAL"
#define RE_ERR_UNSUPPORTED_CPU "ERR_UNSUPPORTED_CPU"

[[noreturn]] inline void fail(const char* code, const std::string& msg) { throw Error(code, msg); }

// Checked between steps and layers of every long native call (the AbortSignal's flag).
inline void check_abort(const std::atomic<bool>* abort, const char* what = "the operation") {
  if (abort && abort->load()) fail(RE_ERR_ABORTED, std::string(what) + " was aborted");
}

}  // namespace re
