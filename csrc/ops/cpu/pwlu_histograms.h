// The parameter gradients' histograms (pwlu_element.h) on the CPU: pieces of elements are
// prepassed (pwlu_loops.h) and their addends then scattered into a histogram, in an order that
// depends on the shape only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../pwlu_element.h"
#include "pwlu_loops.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

// Pieces of at most kPiece elements go through two loops: a vectorised prepass writes grad_x
// and, per element, its histogram slot and its two addends (g and g * u, pwlu_element.h); a
// scalar loop then does the scatter-adds, which no ISA vectorises well. Sums of one piece stay
// short enough for float precision; pieces are added into the run's histogram in order.
constexpr int64_t kPiece = 1024;

template <typename acc_t>
struct PieceScratch {
  std::vector<int32_t> slot;  // the element's histogram offset (of its pair)
  std::vector<acc_t> pairs;   // per element: g, g * u
  explicit PieceScratch(int64_t size) : slot(size), pairs(2 * size) {}
};

// histogram[0..1] += v[0..1]: an element's (A, B) pair in one 8-byte load, add and store.
template <typename acc_t>
C10_ALWAYS_INLINE void add_pair(acc_t* histogram, const acc_t* v) {
  histogram[0] += v[0];
  histogram[1] += v[1];
}

#if defined(__SSE2__)
template <>
C10_ALWAYS_INLINE void add_pair<float>(float* histogram, const float* v) {
  const __m128 h = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(histogram)));
  const __m128 a = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(v)));
  _mm_store_sd(reinterpret_cast<double*>(histogram), _mm_castps_pd(_mm_add_ps(h, a)));
}
#endif

// The scatter-adds of a prepassed piece: histogram[slot] += (g, g * u), element by element.
template <typename acc_t>
void scatter_piece(const PieceScratch<acc_t>& p, int64_t len, acc_t* histogram) {
  for (int64_t k = 0; k < len; ++k) add_pair(histogram + p.slot[k], p.pairs.data() + 2 * k);
}

// scatter_piece for a run of one set. Neighbouring elements mostly share a slot, so a single
// histogram would chain every add on the previous one through memory: `copies` interleaved
// histograms (element k into copy k % copies, added at the end in copy order) keep that many
// adds in flight.
template <typename acc_t>
void scatter_piece_copies(const PieceScratch<acc_t>& p, int64_t len, int copies, int64_t span,
                          acc_t* histogram, std::vector<acc_t>& copy_buf) {
  const int32_t* slot = p.slot.data();
  const acc_t* pairs = p.pairs.data();
  copy_buf.assign(copies * span, acc_t(0));
  int64_t k = 0;
  for (; k + copies <= len; k += copies) {
    for (int c = 0; c < copies; ++c) {
      add_pair(copy_buf.data() + c * span + slot[k + c], pairs + 2 * (k + c));
    }
  }
  for (; k < len; ++k) add_pair(copy_buf.data() + slot[k], pairs + 2 * k);
  for (int c = 0; c < copies; ++c) {
    for (int64_t w = 0; w < span; ++w) histogram[w] += copy_buf[c * span + w];
  }
}

// The scatter-adds of a prepassed tile (avx512::prepass_tile: element of channel k, row i at
// k * 16 + i), row by row so that neighbouring adds go to different channels.
template <typename acc_t>
void scatter_tile(const PieceScratch<acc_t>& p, int64_t channels, acc_t* histogram) {
  for (int64_t i = 0; i < 16; ++i) {
    for (int64_t k = 0; k < channels; ++k) {
      const int64_t e = k * 16 + i;
      add_pair(histogram + p.slot[e], p.pairs.data() + 2 * e);
    }
  }
}

// Buffers of param_grad_run, allocated once per parallel task.
template <typename scalar_t, typename acc_t>
struct RunScratch {
  PieceScratch<acc_t> piece;
  std::vector<scalar_t> gx;
  std::vector<acc_t> piece_hist, copies;
  RunScratch(int64_t size, int n) : piece(size), gx(size), piece_hist(histogram_width(n)) {}
};

// Adds the first m elements of the scratch piece (their slots and pairs) into histogram.
template <typename scalar_t, typename acc_t>
void add_piece(RunScratch<scalar_t, acc_t>& scratch, int64_t m, int width, acc_t* histogram) {
  std::vector<acc_t>& piece_hist = scratch.piece_hist;
  std::fill(piece_hist.begin(), piece_hist.end(), acc_t(0));
  if (m >= 64) {
    scatter_piece_copies(scratch.piece, m, /*copies=*/4, width, piece_hist.data(),
                         scratch.copies);
  } else {
    scatter_piece(scratch.piece, m, piece_hist.data());
  }
  for (int w = 0; w < width; ++w) histogram[w] += piece_hist[w];
}

// grad_x (into gx, or scratch when null) and the histogram of a run of one set, by pieces.
template <typename scalar_t, typename acc_t>
void param_grad_run(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                    acc_t inv, int n, const acc_t* slopes, acc_t* histogram,
                    RunScratch<scalar_t, acc_t>& scratch) {
  for (int64_t start = 0; start < len; start += kPiece) {
    const int64_t m = std::min(kPiece, len - start);
    prepass_run_fast(g + start, x + start, gx ? gx + start : scratch.gx.data(), m, lb, inv, n,
                     slopes, scratch.piece.slot.data(), scratch.piece.pairs.data());
    add_piece(scratch, m, histogram_width(n), histogram);
  }
}

// As param_grad_run for `count` runs of one set, each of len <= kPiece elements, run o at
// o * stride (the planes of one channel): runs are packed into shared pieces, so that the
// scatter and the histogram adds happen once per piece rather than once per run: their fixed
// costs would otherwise outweigh the work on short planes such as a 7 x 7 RoI map's 49.
template <typename scalar_t, typename acc_t>
void param_grad_short_runs(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t count,
                           int64_t stride, int64_t len, acc_t lb, acc_t inv, int n,
                           const acc_t* slopes, acc_t* histogram,
                           RunScratch<scalar_t, acc_t>& scratch) {
  const int width = histogram_width(n);
  int64_t filled = 0;
  for (int64_t o = 0; o < count; ++o) {
    if (filled + len > kPiece) {
      add_piece(scratch, filled, width, histogram);
      filled = 0;
    }
    const int64_t base = o * stride;
    prepass_run_fast(g + base, x + base, gx ? gx + base : scratch.gx.data() + filled, len, lb,
                     inv, n, slopes, scratch.piece.slot.data() + filled,
                     scratch.piece.pairs.data() + 2 * filled);
    filled += len;
  }
  if (filled > 0) add_piece(scratch, filled, width, histogram);
}

// Work blocks of the flat (layer-wise) path: a count that depends on the shape only, so that
// the block order of the sums, and the result, never depend on the thread count.
inline int64_t flat_blocks(int64_t numel) {
  return std::max<int64_t>(1, std::min<int64_t>(numel / 65536, 64));
}

// Adds block histograms (num_blocks x span) into out in block order.
template <typename acc_t>
void add_blocks(const std::vector<acc_t>& blocks, int64_t count, int64_t span, acc_t* out) {
  for (int64_t b = 0; b < count; ++b) {
    const acc_t* hist = blocks.data() + b * span;
    for (int64_t k = 0; k < span; ++k) out[k] += hist[k];
  }
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
