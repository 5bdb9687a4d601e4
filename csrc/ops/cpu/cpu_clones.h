// Per-ISA clones of the CPU element loops: GCC compiles a function marked PWLU_CPU_CLONES for
// AVX2 and for the baseline ISA and picks one at load time, so that one binary vectorises well
// on every x86-64 machine. Elsewhere the macro is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PWLU_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PWLU_CPU_CLONES
#endif
