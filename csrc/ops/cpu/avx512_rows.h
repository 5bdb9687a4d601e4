// AVX-512 path of interleaved rows (channels-last and 2-D inputs: a row of C channels, each with
// its own parameters), one row at a time: forward, input gradient and backward prepass of 16
// channels per step. Each returns the number of leading channels it did; the generic loops
// (pwlu_loops.h) finish the rest. Included through avx512.h.
#pragma once

#include <cstdint>

#include "avx512_vectors.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {
namespace avx512 {

// Rows use the point form of pwlu_element.h (point_piece): slopes and anchors from the raw
// parameters, with two gathers of Y per 16 elements and no per-channel table to build. Row:
// RowView<float> (pwlu_loops.h), the per-channel parameters as arrays.

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
}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
