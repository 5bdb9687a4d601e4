// AVX-512 fast path of the CPU forward and input-gradient loops for runs of one parameter set.
//
// With N + 2 <= 32 table entries, a whole (slope, intercept) table fits in two 16-float
// registers and the per-element look-up becomes one two-source permute (vpermt2ps) instead of a
// gather: 16 elements cost about ten instructions, so the loop runs at memory speed. The
// arithmetic is that of pwlu_element.h (clamped_coordinate / table_entry / forward_value_finite)
// written with intrinsics; the tests compare both paths against the reference.
// Used when the CPU has AVX-512F (checked at run time); other CPUs take the generic loops.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#define PWLU_HAVE_AVX512_PATH 1

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

namespace pwlu_mmdet {
namespace ops {
namespace avx512 {

inline bool available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

// Whether a set with N intervals fits the two-register table.
inline bool fits(int num_intervals) { return num_intervals + 2 <= 32; }

struct Table {
  __m512 lo, hi;  // entries 0..15 and 16..31
};

// `values` holds 32 readable entries (the kernel pads every table to 32).
__attribute__((target("avx512f"))) inline Table load_table(const float* values) {
  return {_mm512_loadu_ps(values), _mm512_loadu_ps(values + 16)};
}

// Table entry j of 16 elements, as clamped_coordinate + table_entry: t becomes -1 unless
// t >= 0 (negative and NaN t), is capped at N, truncated, plus one.
__attribute__((target("avx512f"))) inline __m512i entries(__m512 x, __m512 lb, __m512 inv,
                                                          __m512 n) {
  __m512 t = _mm512_mul_ps(_mm512_sub_ps(x, lb), inv);
  const __mmask16 inside = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ);
  t = _mm512_mask_mov_ps(_mm512_set1_ps(-1.f), inside, t);
  t = _mm512_min_ps(t, n);
  return _mm512_add_epi32(_mm512_cvttps_epi32(t), _mm512_set1_epi32(1));
}

__attribute__((target("avx512f"))) inline __m512 lookup(const Table& table, __m512i j) {
  return _mm512_permutex2var_ps(table.lo, j, table.hi);
}

// y = x * S_j + O_j, with forward_value's limit at x = +-inf for zero slopes: where y is NaN but
// x is not, the intercept is the answer.
__attribute__((target("avx512f"))) inline __m512 forward16(__m512 x, const Table& s,
                                                           const Table& o, __m512 lb,
                                                           __m512 inv, __m512 n) {
  const __m512i j = entries(x, lb, inv, n);
  const __m512 slope = lookup(s, j);
  const __m512 intercept = lookup(o, j);
  const __m512 y = _mm512_fmadd_ps(x, slope, intercept);
  const __mmask16 fix =
      _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q);
  return _mm512_mask_mov_ps(y, fix, intercept);
}

// float <-> bfloat16, 16 at a time; the narrowing rounds to nearest even and keeps NaN a NaN,
// as c10::BFloat16's conversion does.
__attribute__((target("avx512f"))) inline __m512 load_bf16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx512f"))) inline void store_bf16(c10::BFloat16* p, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
}

__attribute__((target("avx512f"))) inline __m512 load(const float* p) {
  return _mm512_loadu_ps(p);
}
__attribute__((target("avx512f"))) inline __m512 load(const c10::BFloat16* p) {
  return load_bf16(p);
}
__attribute__((target("avx512f"))) inline void store(float* p, __m512 v) {
  _mm512_storeu_ps(p, v);
}
__attribute__((target("avx512f"))) inline void store(c10::BFloat16* p, __m512 v) {
  store_bf16(p, v);
}

// Forward of a run; returns the number of leading elements done (a multiple of 16): the caller
// finishes the tail with the generic loop.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t forward_run(const scalar_t* x, scalar_t* y,
                                                       int64_t len, float lb, float inv, int n,
                                                       const float* slopes,
                                                       const float* intercepts) {
  const Table s = load_table(slopes);
  const Table o = load_table(intercepts);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    store(y + k, forward16(load(x + k), s, o, vlb, vinv, vn));
  }
  return k;
}

// grad_x = g * S_j of a run; returns the number of leading elements done.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t input_grad_run(const scalar_t* g, const scalar_t* x,
                                                          scalar_t* gx, int64_t len, float lb,
                                                          float inv, int n,
                                                          const float* slopes) {
  const Table s = load_table(slopes);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    const __m512i j = entries(load(x + k), vlb, vinv, vn);
    store(gx + k, _mm512_mul_ps(load(g + k), lookup(s, j)));
  }
  return k;
}

// Forward of a row of interleaved channels (channel c uses the table at c * stride): each lane
// has its own table, so the look-ups are gathers. Returns the number of leading channels done.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t forward_row(const scalar_t* x, scalar_t* y,
                                                       int64_t channels, const float* lbs,
                                                       const float* invs, int n, int stride,
                                                       const float* slopes,
                                                       const float* intercepts) {
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i vstride = _mm512_set1_epi32(stride);
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    const __m512 xv = load(x + c);
    const __m512i j = entries(xv, _mm512_loadu_ps(lbs + c), _mm512_loadu_ps(invs + c), vn);
    const __m512i channel = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c)), lane);
    const __m512i index = _mm512_add_epi32(_mm512_mullo_epi32(channel, vstride), j);
    const __m512 slope = _mm512_i32gather_ps(index, slopes, 4);
    const __m512 intercept = _mm512_i32gather_ps(index, intercepts, 4);
    const __m512 yv = _mm512_fmadd_ps(xv, slope, intercept);
    const __mmask16 fix =
        _mm512_cmp_ps_mask(yv, yv, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(xv, xv, _CMP_ORD_Q);
    store(y + c, _mm512_mask_mov_ps(yv, fix, intercept));
  }
  return c;
}

}  // namespace avx512
}  // namespace ops
}  // namespace pwlu_mmdet

#endif  // __GNUC__ && __x86_64__
