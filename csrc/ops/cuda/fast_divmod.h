// Division by a divisor fixed for a whole kernel launch, for finding an element's channel.
//
// A 64-bit division compiles to a long software sequence on the GPU (tens of integer
// instructions), more than the rest of a PWLU element. For 32-bit indices the division becomes
// a multiply-high, an add and a shift (Granlund and Montgomery, "Division by invariant integers
// using multiplication", 1994; the same scheme as ATen's IntDivider); 64-bit indices, needed
// only for tensors of 2^31 elements or more, keep the plain division.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace pwlu_mmdet {
namespace ops {

template <typename index_t>
struct FastDivmod;

// Exact for dividends and divisors below 2^31.
template <>
struct FastDivmod<uint32_t> {
  uint32_t divisor;
  uint32_t multiplier;
  uint32_t shift;

  explicit FastDivmod(int64_t d) : divisor(static_cast<uint32_t>(d)) {
    TORCH_INTERNAL_ASSERT(d >= 1 && d < (int64_t(1) << 31));
    shift = 0;
    while ((uint64_t(1) << shift) < divisor) ++shift;
    const uint64_t magic =
        ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - divisor)) / divisor + 1;
    TORCH_INTERNAL_ASSERT(magic <= UINT32_MAX);
    multiplier = static_cast<uint32_t>(magic);
  }

  C10_HOST_DEVICE C10_ALWAYS_INLINE uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, multiplier);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t(n) * multiplier) >> 32);
#endif
    return (high + n) >> shift;
  }

  C10_HOST_DEVICE C10_ALWAYS_INLINE uint32_t mod(uint32_t n) const {
    return n - div(n) * divisor;
  }
};

template <>
struct FastDivmod<int64_t> {
  int64_t divisor;

  explicit FastDivmod(int64_t d) : divisor(d) { TORCH_INTERNAL_ASSERT(d >= 1); }
  C10_HOST_DEVICE C10_ALWAYS_INLINE int64_t div(int64_t n) const { return n / divisor; }
  C10_HOST_DEVICE C10_ALWAYS_INLINE int64_t mod(int64_t n) const { return n % divisor; }
};

// The two divisors of a (outer, C, inner) layout: element i lies in channel (i / inner) % C.
template <typename index_t>
struct LayoutDivisors {
  FastDivmod<index_t> inner;
  FastDivmod<index_t> channels;

  LayoutDivisors(int64_t inner_size, int64_t num_channels)
      : inner(inner_size), channels(num_channels) {}
};

}  // namespace ops
}  // namespace pwlu_mmdet
