// AVX-512 fast paths of the CPU loops (forward, input gradient, backward prepass).
//
// Runs of one parameter set: with N + 2 <= 32 table entries, a whole (slope, intercept) table fits in two 16-float
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
#include <type_traits>

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

// build_table (pwlu_element.h) of a set with N + 2 <= 32 entries, padded with zeros to 32, 16
// inner intervals per step: an fc layer's 1024 tables cost as much as its elements when built
// one entry at a time. Inner interval idx: S = (Y_{idx+1} - Y_idx) * inv_width and
// O = Y_idx - (B_L + idx * d) * S, as inner_pair.
__attribute__((target("avx512f"))) inline void build_table32(const float* points, float lb,
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

// Runs end with a tail of len % 16 elements. float runs do it with masked loads and stores
// (AVX-512F; masked-out lanes are neither read nor written), so that short runs take no scalar
// tail: a 7 x 7 RoI map is runs of 49 elements, and its scalar tails cost as much as the rest.
// bfloat16 runs leave the tail to the generic loop (masked 16-bit moves need AVX-512BW).
// The elements of a run of len that the vector loop does:
template <typename scalar_t>
inline int64_t vector_end(int64_t len) {
  return std::is_same<scalar_t, float>::value ? len : len / 16 * 16;
}

// The mask of the block of 16 that starts `rest` elements before the end.
inline __mmask16 block_mask(int64_t rest) {
  return rest >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rest) - 1u);
}

// Masked float loads and stores (full blocks pass an all-ones mask; bfloat16 never gets
// another).
__attribute__((target("avx512f"))) inline __m512 load(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
__attribute__((target("avx512f"))) inline __m512 load(const c10::BFloat16* p, __mmask16) {
  return load_bf16(p);
}
__attribute__((target("avx512f"))) inline void store(float* p, __m512 v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}
__attribute__((target("avx512f"))) inline void store(c10::BFloat16* p, __m512 v, __mmask16) {
  store_bf16(p, v);
}

// Forward of a run; returns the number of leading elements done (all of a float run, a multiple
// of 16 of a bfloat16 one): the caller finishes the rest with the generic loop.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t forward_run(const scalar_t* x, scalar_t* y,
                                                       int64_t len, float lb, float inv, int n,
                                                       const float* slopes,
                                                       const float* intercepts) {
  const Table s = load_table(slopes);
  const Table o = load_table(intercepts);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    store(y + k, forward16(load(x + k, m), s, o, vlb, vinv, vn), m);
  }
  return end;
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
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    const __m512i j = entries(load(x + k, m), vlb, vinv, vn);
    store(gx + k, _mm512_mul_ps(load(g + k, m), lookup(s, j)), m);
  }
  return end;
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

// Prepass of a run (see prepass_run_impl in pwlu_kernel.cpp): grad_x = g * S_j, and per
// element its histogram slot 2 j and addends g and g * (t - base_j). Returns the number of
// leading elements done.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t prepass_run(const scalar_t* g, const scalar_t* x,
                                                       scalar_t* gx, int64_t len, float lb,
                                                       float inv, int n, const float* slopes,
                                                       int32_t* slot, float* pairs) {
  const Table s = load_table(slopes);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const __m512i vni = _mm512_set1_epi32(n);
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    const __m512 gv = load(g + k, m);
    const __m512 t = coordinates(load(x + k, m), vlb, vinv);
    const __m512i j = entries_of(t, vn);
    store(gx + k, _mm512_mul_ps(gv, lookup(s, j)), m);
    _mm512_mask_storeu_epi32(slot + k, m, _mm512_add_epi32(j, j));
    store_addends(pairs + 2 * k, gv, t, _mm512_sub_ps(t, entry_bases(j, vni)), m);
  }
  return end;
}

// Interleaved channels (a row of C channels, channel c with its own parameters) use the point
// form of pwlu_element.h (point_piece): slopes and anchors from the raw parameters, with two
// gathers of Y per 16 elements and no per-channel table to build. Row: RowView<float>
// (pwlu_kernel.cpp), the per-channel parameters as arrays.
// Whether a row of `channels` can index its points with int32 lanes.
inline bool row_fits(int64_t channels, int n) {
  return channels * (n + 1) < (int64_t(1) << 31);
}

struct Pieces16 {
  __m512 t;       // interval coordinates
  __m512i j;      // table entries
  __m512 slope;   // S_j
  __m512 anchor_x, anchor_y;
};

// The per-lane (per-channel) parameters of the point form.
struct PointParams16 {
  __m512 lb, inv, step, left_slope, right_slope, rb;
};

// t, j and a = clamp(j - 1, 0, N - 1) of 16 elements: Y_a and Y_{a+1} are the piece's end points
// (inner), Y_0 (left) or Y_N (right).
__attribute__((target("avx512f"))) inline __m512i coordinates_and_entries(__m512 x,
                                                                          const PointParams16& q,
                                                                          int n, Pieces16* r) {
  r->t = coordinates(x, q.lb, q.inv);
  r->j = entries_of(r->t, _mm512_set1_ps(static_cast<float>(n)));
  return _mm512_max_epi32(
      _mm512_min_epi32(_mm512_sub_epi32(r->j, _mm512_set1_epi32(1)), _mm512_set1_epi32(n - 1)),
      _mm512_setzero_si512());
}

// point_piece from Y_a, Y_{a+1}; anchors only when `anchors`.
template <bool anchors>
__attribute__((target("avx512f"))) inline void finish_pieces(const PointParams16& q, int n,
                                                             __m512i a, __m512 y0, __m512 y1,
                                                             Pieces16* r) {
  const __mmask16 left = _mm512_cmpeq_epi32_mask(r->j, _mm512_setzero_si512());
  const __mmask16 right = _mm512_cmpeq_epi32_mask(r->j, _mm512_set1_epi32(n + 1));
  r->slope = _mm512_mul_ps(_mm512_sub_ps(y1, y0), q.inv);
  r->slope = _mm512_mask_mov_ps(r->slope, left, q.left_slope);
  r->slope = _mm512_mask_mov_ps(r->slope, right, q.right_slope);
  if (anchors) {
    // B_a = B_L + a * d, written as point_piece does (a multiply, then an add).
    r->anchor_x = _mm512_add_ps(q.lb, _mm512_mul_ps(_mm512_cvtepi32_ps(a), q.step));
    r->anchor_x = _mm512_mask_mov_ps(r->anchor_x, right, q.rb);
    r->anchor_y = _mm512_mask_mov_ps(y0, right, y1);
  }
}

// y = anchor_y + S_j (x - anchor_x), with the limit at x = +-inf for a zero slope (NaN y for a
// non-NaN x).
__attribute__((target("avx512f"))) inline __m512 point_value(__m512 x, const Pieces16& r) {
  const __m512 y = _mm512_add_ps(r.anchor_y, _mm512_mul_ps(r.slope, _mm512_sub_ps(x, r.anchor_x)));
  const __mmask16 fix =
      _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q);
  return _mm512_mask_mov_ps(y, fix, r.anchor_y);
}

// point_piece for channels c .. c + 15 of a row (lane = channel): Y by two gathers.
template <bool anchors, typename Row>
__attribute__((target("avx512f"))) inline Pieces16 row_pieces(__m512 x, const Row& p,
                                                              int64_t c) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const PointParams16 q = {_mm512_loadu_ps(p.left_bound + c), _mm512_loadu_ps(p.inv_width + c),
                           _mm512_loadu_ps(p.step + c),       _mm512_loadu_ps(p.left_slope + c),
                           _mm512_loadu_ps(p.right_slope + c), _mm512_loadu_ps(p.right_bound + c)};
  Pieces16 r;
  const __m512i a = coordinates_and_entries(x, q, p.n, &r);
  const __m512i channel = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c)), lane);
  const __m512i index =
      _mm512_add_epi32(_mm512_mullo_epi32(channel, _mm512_set1_epi32(p.n + 1)), a);
  const __m512 y0 = _mm512_i32gather_ps(index, p.points, 4);
  const __m512 y1 =
      _mm512_i32gather_ps(_mm512_add_epi32(index, _mm512_set1_epi32(1)), p.points, 4);
  finish_pieces<anchors>(q, p.n, a, y0, y1, &r);
  return r;
}

// Tiles of 16 rows x 16 channels avoid the gathers, which cost about 2.5 cycles per element on
// the CPUs we measured: the tile is transposed in registers so that a register holds 16 rows of
// one channel, whose (slope, intercept) table then sits in registers as a run's does (forward16,
// lookup). Tables: per channel of the tile (channel 0 at the tile's x) ranges[c], slopes_of(c)
// and intercepts_of(c), 32 readable entries each (GroupTables in pwlu_kernel.cpp).

// Loops over a tile's 16 registers are unrolled (#pragma GCC unroll) so that the tile stays in
// registers: rolled, GCC kept it on the stack, and the forward of a (512, 1024) input took 1.5x
// as long (0.235 ms against 0.124-0.156 ms).

// 16 x 16 transpose: lane k of r[i] <-> lane i of r[k].
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512* r) {
  __m512 t[16];
  #pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Prefetches (into L2) a 16-channel column of the tile after next (rows 32..47): a tile reads 16
// rows a row length apart, a pattern the hardware prefetchers follow poorly (the forward of a
// channels-last 2 x 64 x 200 x 304 input waited on its loads: 4.9 ms without, 3.3-3.8 with).
template <typename scalar_t>
__attribute__((always_inline)) inline void prefetch_next_tile(const scalar_t* p, int64_t stride) {
  for (int i = 32; i < 48; ++i) __builtin_prefetch(p + i * stride, 0, 2);
}

// forward16 of the transposed tile v (register k: channel c + k).
template <bool exact, typename Tables>
__attribute__((target("avx512f"), always_inline)) inline void forward_tile_values(
    __m512* v, int64_t c, const Tables& tab, __m512 vn) {
  #pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) {
    const int64_t s = c + k;
    v[k] = forward16<exact>(v[k], load_table(tab.slopes_of(s)), load_table(tab.intercepts_of(s)),
                            _mm512_set1_ps(tab.ranges[s].left_bound),
                            _mm512_set1_ps(tab.ranges[s].inv_width), vn);
  }
}

// Forward of a tile of 16 rows (row i at x + i * stride) and `channels` channels, in blocks of
// 16. Returns the number of leading channels done.
template <typename scalar_t, typename Tables>
__attribute__((target("avx512f"))) int64_t forward_tile(const scalar_t* x, scalar_t* y,
                                                        int64_t stride, int64_t channels,
                                                        const Tables& tab) {
  const __m512 vn = _mm512_set1_ps(static_cast<float>(tab.n));
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    prefetch_next_tile(x + c, stride);
    __m512 v[16];
    __m512 probe = _mm512_setzero_ps();
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      v[i] = load(x + i * stride + c);
      probe = probe_finite(probe, v[i]);
    }
    transpose16(v);
    // One check per tile rather than forward16's per vector: infinities are rare, and the tile
    // path is compute-bound.
    if (all_finite(probe)) {
      forward_tile_values<false>(v, c, tab, vn);
    } else {
      forward_tile_values<true>(v, c, tab, vn);
    }
    transpose16(v);
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) store(y + i * stride + c, v[i]);
  }
  return c;
}

// Loads the 16 x 16 tiles of x and g (row i at + i * stride), transposed: a register per
// channel.
template <typename scalar_t>
__attribute__((target("avx512f"), always_inline)) inline void load_tiles(const scalar_t* x,
                                                                         const scalar_t* g,
                                                                         int64_t stride,
                                                                         __m512* xv,
                                                                         __m512* gv) {
  prefetch_next_tile(x, stride);
  prefetch_next_tile(g, stride);
  #pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    xv[i] = load(x + i * stride);
    gv[i] = load(g + i * stride);
  }
  transpose16(xv);
  transpose16(gv);
}

// Interval coordinates of 16 rows of the tile's channel s.
template <typename Tables>
__attribute__((target("avx512f"), always_inline)) inline __m512 tile_coordinates(
    __m512 x, const Tables& tab, int64_t s) {
  return coordinates(x, _mm512_set1_ps(tab.ranges[s].left_bound),
                     _mm512_set1_ps(tab.ranges[s].inv_width));
}

// grad_x = g * S_j of a tile (as forward_tile; row i of grad_x at gx + i * gx_stride) and,
// with `histogram` (the prepass, see prepass_row), the slot and pair of channel c, row i at
// element c * 16 + i of the scratch, i.e. by channel; slot = c * W + 2 j. Returns the number of
// leading channels done.
template <bool histogram, typename scalar_t, typename Tables>
__attribute__((target("avx512f"), always_inline)) inline int64_t grad_tile(
    const scalar_t* g, const scalar_t* x, int64_t stride, scalar_t* gx, int64_t gx_stride,
    int64_t channels, const Tables& tab, int32_t* slot, float* pairs) {
  const __m512 vn = _mm512_set1_ps(static_cast<float>(tab.n));
  const __m512i vni = _mm512_set1_epi32(tab.n);
  const int width = 2 * (tab.n + 2);
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    __m512 xv[16], gv[16];
    load_tiles(x + c, g + c, stride, xv, gv);
    #pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) {
      const int64_t s = c + k;
      const __m512 t = tile_coordinates(xv[k], tab, s);
      const __m512i j = entries_of(t, vn);
      if (histogram) {
        const int64_t e = s * 16;
        _mm512_storeu_si512(
            slot + e, _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(s) * width),
                                       _mm512_add_epi32(j, j)));
        store_addends(pairs + 2 * e, gv[k], t, _mm512_sub_ps(t, entry_bases(j, vni)));
      }
      gv[k] = _mm512_mul_ps(gv[k], lookup(load_table(tab.slopes_of(s)), j));
    }
    transpose16(gv);
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) store(gx + i * gx_stride + c, gv[i]);
  }
  return c;
}

template <typename scalar_t, typename Tables>
__attribute__((target("avx512f"))) int64_t input_grad_tile(const scalar_t* g, const scalar_t* x,
                                                           scalar_t* gx, int64_t stride,
                                                           int64_t channels, const Tables& tab) {
  return grad_tile<false>(g, x, stride, gx, stride, channels, tab, nullptr, nullptr);
}

template <typename scalar_t, typename Tables>
__attribute__((target("avx512f"))) int64_t prepass_tile(const scalar_t* g, const scalar_t* x,
                                                        int64_t stride, scalar_t* gx,
                                                        int64_t gx_stride, int64_t channels,
                                                        const Tables& tab, int32_t* slot,
                                                        float* pairs) {
  return grad_tile<true>(g, x, stride, gx, gx_stride, channels, tab, slot, pairs);
}

// Forward of a row (forward_value_points). Returns the number of leading channels done.
template <typename scalar_t, typename Row>
__attribute__((target("avx512f"))) int64_t forward_row(const scalar_t* x, scalar_t* y,
                                                       int64_t channels, const Row& p) {
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    const __m512 xv = load(x + c);
    store(y + c, point_value(xv, row_pieces<true>(xv, p, c)));
  }
  return c;
}

// grad_x = g * S_j of a row. Returns the number of leading channels done.
template <typename scalar_t, typename Row>
__attribute__((target("avx512f"))) int64_t input_grad_row(const scalar_t* g, const scalar_t* x,
                                                          scalar_t* gx, int64_t channels,
                                                          const Row& p) {
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    const Pieces16 r = row_pieces<false>(load(x + c), p, c);
    store(gx + c, _mm512_mul_ps(load(g + c), r.slope));
  }
  return c;
}

// Prepass of a row: grad_x, slot = c * W + 2 j (W = histogram_width(N)) and the addends g and
// g * (t - base_j). Returns the number of leading channels done.
template <typename scalar_t, typename Row>
__attribute__((target("avx512f"))) int64_t prepass_row(const scalar_t* g, const scalar_t* x,
                                                       scalar_t* gx, int64_t channels,
                                                       const Row& p, int32_t* slot,
                                                       float* pairs) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i width = _mm512_set1_epi32(2 * (p.n + 2));
  const __m512i vni = _mm512_set1_epi32(p.n);
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    const __m512 gv = load(g + c);
    const Pieces16 r = row_pieces<false>(load(x + c), p, c);
    store(gx + c, _mm512_mul_ps(gv, r.slope));
    const __m512i channel = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c)), lane);
    _mm512_storeu_si512(slot + c, _mm512_add_epi32(_mm512_mullo_epi32(channel, width),
                                                   _mm512_add_epi32(r.j, r.j)));
    store_addends(pairs + 2 * c, gv, r.t, _mm512_sub_ps(r.t, entry_bases(r.j, vni)));
  }
  return c;
}

}  // namespace avx512
}  // namespace ops
}  // namespace pwlu_mmdet

#endif  // __GNUC__ && __x86_64__
