// kernels_v4.cpp — cpu/kernels.inc compiled for x86-64-v4 (AVX-512, 512-bit vectors); CMakeLists.txt sets this file's -march.
// Selected at run time by cpu/isa.cpp, only on a CPU that supports the level.
#define RE_KNS k_v4
#define RE_VW 16
#define RE_ISA CpuIsa::v4
#include "cpu/kernels.inc"
