// kernels_x86_64.cpp — cpu/kernels.inc compiled for baseline x86-64 (SSE2, 128-bit vectors); CMakeLists.txt sets this file's -march.
// Selected at run time by cpu/isa.cpp, only on a CPU that supports the level.
#define RE_KNS k_baseline
#define RE_VW 4
#define RE_ISA CpuIsa::baseline
#include "cpu/kernels.inc"
