// Per-ISA clones of the CPU element loops: GCC compiles a function marked PWLU_CPU_CLONES for
// AVX2 and for the baseline ISA and picks one at load time, so that one binary vectorises well
// on every x86-64 machine. Elsewhere the macro is empty.
#pragma once

// Instantiates M(scalar_t, acc_t) for every input dtype the kernels dispatch on.
#define PWLU_FOR_EACH_DTYPE(M) \
  M(float, float)              \
  M(double, double)            \
  M(c10::Half, float)          \
  M(c10::BFloat16, float)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PWLU_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PWLU_CPU_CLONES
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace pwlu_mmdet {
namespace ops {

// acc_t -> scalar_t for the element loops. For bfloat16 this is c10's round-to-nearest-even
// conversion written without a branch (NaN is a select, not an `if`), so that loops storing
// bfloat16 still vectorise.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}

template <>
C10_ALWAYS_INLINE c10::BFloat16 from_acc<c10::BFloat16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint16_t bits = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}

}  // namespace ops
}  // namespace pwlu_mmdet
