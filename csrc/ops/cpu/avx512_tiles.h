// AVX-512 path of interleaved rows by tiles of 16 rows x 16 channels (pwlu_row_tiles.h):
// forward, input gradient and backward prepass. Each returns the number of leading channels it
// did; the row path does the rest. Included through avx512.h.
#pragma once

#include <cstdint>

#include "avx512_vectors.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {
namespace avx512 {

// Tiles avoid the row path's gathers, which are slow: the tile is transposed in registers so that
// a register holds 16 rows of one channel, whose (slope, intercept) table then sits in registers
// as a plane's does (forward16, lookup). Tables: per channel of the tile (channel 0 at the tile's
// x) ranges[c], slopes_of(c) and intercepts_of(c), 32 readable entries each (GroupTables in
// pwlu_row_tiles.h).

// Loops over a tile's 16 registers are unrolled (#pragma GCC unroll) so that the tile stays in
// registers: rolled, GCC keeps it on the stack.

// One stage of 128-bit lane exchanges: for each pair of registers (i, i + kStride) in a block
// of 2 kStride, dst[i] gets the even 128-bit lanes of src[i] and src[i + kStride], and
// dst[i + kStride] the odd ones.
template <int kStride>
__attribute__((target("avx512f"), always_inline)) inline void exchange_lanes(const __m512* src,
                                                                             __m512* dst) {
  #pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    if (i & kStride) continue;
    dst[i] = _mm512_shuffle_f32x4(src[i], src[i + kStride], 0x88);
    dst[i + kStride] = _mm512_shuffle_f32x4(src[i], src[i + kStride], 0xdd);
  }
}

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
  exchange_lanes<4>(r, t);
  exchange_lanes<8>(t, r);
}

// Prefetches (into L2) a 16-channel column of the tile after next (rows 32..47): a tile reads 16
// rows a row length apart, a pattern the hardware prefetchers follow poorly, so that large
// channels-last maps would otherwise wait on their loads.
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

}  // namespace avx512
}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
