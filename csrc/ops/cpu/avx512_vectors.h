// AVX-512 building blocks shared by the plane, row and tile paths (avx512_planes.h,
// avx512_rows.h, avx512_tiles.h): a set's (slope, intercept) table held in two registers, the
// piece look-up of 16 elements, float <-> bfloat16 conversion and the histogram addends. The
// arithmetic is that of pwlu_element.h written with intrinsics; the tests compare every path
// against the reference.
// Included through avx512.h, which decides where these paths run.
#pragma once

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

namespace pwlu_mmdet {
namespace ops {
namespace cpu {
namespace avx512 {

// With N + 2 <= 32 entries a whole (slope, intercept) table fits in two 16-float registers, and
// the look-up of 16 elements' pieces is one two-source permute (vpermt2ps) instead of a gather:
// the loops then stay bound by memory rather than by look-ups.
struct Table {
  __m512 lo, hi;  // entries 0..15 and 16..31
};

// `values` holds 32 readable entries (the kernel pads every table to 32).
__attribute__((target("avx512f"))) inline Table load_table(const float* values) {
  return {_mm512_loadu_ps(values), _mm512_loadu_ps(values + 16)};
}

// build_table (pwlu_element.h) of a set with N + 2 <= 32 entries, padded with zeros to 32, 16
// inner intervals per step, so that an fc layer's 1024 tables are not as costly as its elements.
// Inner interval idx: S = (Y_{idx+1} - Y_idx) * inv_width and O = Y_idx - (B_L + idx * d) * S,
// as inner_pair. Returns the number of entries written (32).
__attribute__((target("avx512f"))) inline int build_table32(const float* points, float lb,
                                                             float rb, float inv, float step,
                                                             float ls, float rs, int n,
                                                             float* slopes, float* intercepts) {
  const __m512 zero = _mm512_setzero_ps();
  for (int e = 0; e < 32; e += 16) {
    _mm512_storeu_ps(slopes + e, zero);
    _mm512_storeu_ps(intercepts + e, zero);
  }
  const __m512 first = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int idx = 0; idx < n; idx += 16) {
    const __mmask16 m = static_cast<__mmask16>(n - idx >= 16 ? 0xffffu : (1u << (n - idx)) - 1u);
    const __m512 y0 = _mm512_maskz_loadu_ps(m, points + idx);
    const __m512 y1 = _mm512_maskz_loadu_ps(m, points + idx + 1);
    const __m512 k = _mm512_mul_ps(_mm512_sub_ps(y1, y0), _mm512_set1_ps(inv));
    const __m512 b = _mm512_add_ps(
        _mm512_set1_ps(lb),
        _mm512_mul_ps(_mm512_add_ps(first, _mm512_set1_ps(static_cast<float>(idx))),
                      _mm512_set1_ps(step)));
    _mm512_mask_storeu_ps(slopes + 1 + idx, m, k);
    _mm512_mask_storeu_ps(intercepts + 1 + idx, m, _mm512_sub_ps(y0, _mm512_mul_ps(b, k)));
  }
  slopes[0] = ls;
  intercepts[0] = points[0] - lb * ls;
  slopes[n + 1] = rs;
  intercepts[n + 1] = points[n] - rb * rs;
  return 32;
}

// Interval coordinate t of 16 elements (interval_coordinate).
__attribute__((target("avx512f"))) inline __m512 coordinates(__m512 x, __m512 lb, __m512 inv) {
  return _mm512_mul_ps(_mm512_sub_ps(x, lb), inv);
}

// Table entry j of 16 coordinates, as clamped_coordinate + table_entry (negative and NaN t give
// -1, t >= N gives N, plus one), in three instructions: t clamped to [-1, N] (vmaxps returns its
// second operand, -1, for a NaN t), then converted rounding down, which equals the header's
// truncation on [0, N] and gives -1 on [-1, 0).
__attribute__((target("avx512f"))) inline __m512i entries_of(__m512 t, __m512 n) {
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-1.f)), n);
  return _mm512_add_epi32(_mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
                          _mm512_set1_epi32(1));
}

__attribute__((target("avx512f"))) inline __m512i entries(__m512 x, __m512 lb, __m512 inv,
                                                          __m512 n) {
  return entries_of(coordinates(x, lb, inv), n);
}

// entry_base of 16 entries: clamp(j - 1, 0, N), as float.
__attribute__((target("avx512f"))) inline __m512 entry_bases(__m512i j, __m512i n) {
  const __m512i base = _mm512_max_epi32(_mm512_sub_epi32(j, _mm512_set1_epi32(1)),
                                        _mm512_setzero_si512());
  return _mm512_cvtepi32_ps(_mm512_min_epi32(base, n));
}

__attribute__((target("avx512f"))) inline __m512 lookup(const Table& table, __m512i j) {
  return _mm512_permutex2var_ps(table.lo, j, table.hi);
}

// y = x * S_j + O_j, with forward_value's limit at x = +-inf for zero slopes (`exact`): where y
// is NaN but x is not, the intercept is the answer. Without `exact`, forward_value_finite.
template <bool exact = true>
__attribute__((target("avx512f"), always_inline)) inline __m512 forward16(__m512 x,
                                                                         const Table& s,
                                                                         const Table& o,
                                                                         __m512 lb, __m512 inv,
                                                                         __m512 n) {
  const __m512i j = entries(x, lb, inv, n);
  const __m512 slope = lookup(s, j);
  const __m512 intercept = lookup(o, j);
  const __m512 y = _mm512_fmadd_ps(x, slope, intercept);
  if (!exact) return y;
  const __mmask16 fix =
      _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q);
  return _mm512_mask_mov_ps(y, fix, intercept);
}

// Accumulates x * 0 into probe: it becomes NaN exactly when some x is infinite or NaN, the only
// inputs that need forward16's limit.
__attribute__((target("avx512f"), always_inline)) inline __m512 probe_finite(__m512 probe,
                                                                            __m512 x) {
  return _mm512_fmadd_ps(x, _mm512_setzero_ps(), probe);
}

__attribute__((target("avx512f"), always_inline)) inline bool all_finite(__m512 probe) {
  return _mm512_cmp_ps_mask(probe, probe, _CMP_UNORD_Q) == 0;
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

// Stores (g, g * u) of the elements of mask m, a prefix (of every element by default), as
// interleaved pairs: element i's pair is floats 2 i and 2 i + 1, so elements 0..7 go to the
// first 16 floats and 8..15 to the next.
__attribute__((target("avx512f"))) inline void store_pairs(float* pairs, __m512 g, __m512 gu,
                                                           __mmask16 m = 0xffff) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  const int count = __builtin_popcount(m);
  const uint32_t floats_lo = count >= 8 ? 0xffffu : (1u << (2 * count)) - 1u;
  const uint32_t floats_hi = count <= 8 ? 0u : (1u << (2 * (count - 8))) - 1u;
  _mm512_mask_storeu_ps(pairs, static_cast<__mmask16>(floats_lo),
                        _mm512_permutex2var_ps(g, lo, gu));
  _mm512_mask_storeu_ps(pairs + 16, static_cast<__mmask16>(floats_hi),
                        _mm512_permutex2var_ps(g, hi, gu));
}

// store_pairs of the histogram addends of 16 elements, with histogram_addends' rules
// (pwlu_element.h): a NaN t adds nothing, a zero g adds a zero B whatever u is.
__attribute__((target("avx512f"))) inline void store_addends(float* pairs, __m512 g, __m512 t,
                                                             __m512 u, __mmask16 m = 0xffff) {
  const __mmask16 in_piece = _mm512_cmp_ps_mask(t, t, _CMP_ORD_Q);
  // g != 0 (a NaN g included: it must propagate) among the elements in a piece.
  const __mmask16 moves = _mm512_mask_cmp_ps_mask(in_piece, g, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  store_pairs(pairs, _mm512_maskz_mov_ps(in_piece, g), _mm512_maskz_mul_ps(moves, g, u), m);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
