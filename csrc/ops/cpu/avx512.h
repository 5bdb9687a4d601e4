// The one place that decides whether a CPU loop takes an AVX-512 path (avx512_planes.h,
// avx512_rows.h, avx512_tiles.h) or leaves its elements to the generic loops (pwlu_loops.h).
//
// An AVX-512 path runs where all of these hold:
// * the build has it: GCC-style intrinsics and target attributes on x86-64, so that one binary
//   carries the path and still runs on CPUs without AVX-512;
// * the elements are float or bfloat16 (bfloat16 is widened to float in registers);
// * the CPU has AVX-512F, checked once at run time;
// * the data fits the path's layout (fits, row_fits below, and any extra condition a caller has).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#define PWLU_HAVE_AVX512_PATH 1
#include "avx512_planes.h"
#include "avx512_rows.h"
#include "avx512_tiles.h"
#endif

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

// Element types with an AVX-512 path.
template <typename scalar_t>
constexpr bool kAvx512Element =
    std::is_same<scalar_t, float>::value || std::is_same<scalar_t, c10::BFloat16>::value;

namespace avx512 {

#ifdef PWLU_HAVE_AVX512_PATH
inline bool available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}
#endif

// Whether a set with N intervals fits the two-register table (avx512_vectors.h).
inline bool fits(int num_intervals) { return num_intervals + 2 <= 32; }

// Whether a row of `channels` can index its points with int32 lanes (avx512_rows.h).
inline bool row_fits(int64_t channels, int n) {
  return channels * (n + 1) < (int64_t(1) << 31);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet

// PWLU_AVX512_OR_ZERO(scalar_t, fits, expr): the value of expr, as int64_t, where an AVX-512 path
// applies to scalar_t elements and `fits` holds; 0 elsewhere, where neither is evaluated. expr
// is typically an AVX-512 kernel's count of the leading elements or channels it did. It is
// compiled only for float and bfloat16 in builds that have the path, so callers need no #if.
#ifdef PWLU_HAVE_AVX512_PATH
#define PWLU_AVX512_OR_ZERO(scalar_t, fits, expr)                                  \
  ([&]() -> int64_t {                                                              \
    if constexpr (::pwlu_mmdet::ops::cpu::kAvx512Element<scalar_t>) {              \
      if (::pwlu_mmdet::ops::cpu::avx512::available() && (fits)) return (expr);    \
    }                                                                              \
    return 0;                                                                      \
  }())
#else
#define PWLU_AVX512_OR_ZERO(scalar_t, fits, expr) (int64_t(0))
#endif
