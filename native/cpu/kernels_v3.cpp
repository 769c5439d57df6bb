// kernels_v3.cpp — cpu/kernels.inc compiled for x86-64-v3 (AVX2 + FMA, 256-bit vectors); CMakeLists.txt sets this file's -march.
// Selected at run time by cpu/isa.cpp, only on a CPU that supports the level.
#define RE_KNS k_v3
#define RE_VW 8
#define RE_ISA CpuIsa::v3
#include "cpu/kernels.inc"
