// The parameter gradients' histograms (pwlu_element.h) on the CPU: chunks of elements are
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

// Chunks of at most kHistogramChunk elements go through two loops: a vectorised prepass writes
// grad_x and, per element, its histogram slot and its two addends (g and g * u, pwlu_element.h);
// a scalar loop then does the scatter-adds, which no ISA vectorises well. Sums of one chunk stay
// short enough for float precision; chunks are added into the plane's histogram in order.
constexpr int64_t kHistogramChunk = 1024;

// Chunks of at least this many elements scatter into kScatterCopies interleaved histograms
// (scatter_chunk_copies); below it, zeroing and adding the copies costs more than the chains of
// adds they break.
constexpr int64_t kMinChunkForCopies = 64;
constexpr int kScatterCopies = 4;

template <typename acc_t>
struct ChunkScratch {
  std::vector<int32_t> slot;  // the element's histogram offset (of its pair)
  std::vector<acc_t> pairs;   // per element: g, g * u
  explicit ChunkScratch(int64_t size) : slot(size), pairs(2 * size) {}
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

// The scatter-adds of a prepassed chunk: histogram[slot] += (g, g * u), element by element.
template <typename acc_t>
void scatter_chunk(const ChunkScratch<acc_t>& p, int64_t len, acc_t* histogram) {
  for (int64_t k = 0; k < len; ++k) add_pair(histogram + p.slot[k], p.pairs.data() + 2 * k);
}

// scatter_chunk for a chunk of a plane. Neighbouring elements mostly share a slot, so a single
// histogram would chain every add on the previous one through memory: `copies` interleaved
// histograms (element k into copy k % copies, added at the end in copy order) keep that many
// adds in flight.
template <typename acc_t>
void scatter_chunk_copies(const ChunkScratch<acc_t>& p, int64_t len, int copies, int64_t span,
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
void scatter_tile(const ChunkScratch<acc_t>& p, int64_t channels, acc_t* histogram) {
  for (int64_t i = 0; i < 16; ++i) {
    for (int64_t k = 0; k < channels; ++k) {
      const int64_t e = k * 16 + i;
      add_pair(histogram + p.slot[e], p.pairs.data() + 2 * e);
    }
  }
}

// Buffers of param_grad_plane, allocated once per parallel task.
template <typename scalar_t, typename acc_t>
struct PlaneScratch {
  ChunkScratch<acc_t> chunk;
  std::vector<scalar_t> gx;
  std::vector<acc_t> chunk_hist, copies;
  PlaneScratch(int64_t size, int n) : chunk(size), gx(size), chunk_hist(histogram_width(n)) {}
};

// Adds the first m elements of the scratch chunk (their slots and pairs) into histogram.
template <typename scalar_t, typename acc_t>
void add_chunk(PlaneScratch<scalar_t, acc_t>& scratch, int64_t m, int width, acc_t* histogram) {
  std::vector<acc_t>& chunk_hist = scratch.chunk_hist;
  std::fill(chunk_hist.begin(), chunk_hist.end(), acc_t(0));
  if (m >= kMinChunkForCopies) {
    scatter_chunk_copies(scratch.chunk, m, kScatterCopies, width, chunk_hist.data(),
                         scratch.copies);
  } else {
    scatter_chunk(scratch.chunk, m, chunk_hist.data());
  }
  for (int w = 0; w < width; ++w) histogram[w] += chunk_hist[w];
}

// grad_x (into gx, or scratch when null) and the histogram of a plane, by chunks.
template <typename scalar_t, typename acc_t>
void param_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                      acc_t inv, int n, const acc_t* slopes, acc_t* histogram,
                      PlaneScratch<scalar_t, acc_t>& scratch) {
  for (int64_t start = 0; start < len; start += kHistogramChunk) {
    const int64_t m = std::min(kHistogramChunk, len - start);
    prepass_plane(g + start, x + start, gx ? gx + start : scratch.gx.data(), m, lb, inv, n,
                  slopes, scratch.chunk.slot.data(), scratch.chunk.pairs.data());
    add_chunk(scratch, m, histogram_width(n), histogram);
  }
}

// As param_grad_plane for `count` planes of one channel, each of len <= kHistogramChunk
// elements, plane o at o * stride: planes are packed into shared chunks, so that the scatter and
// the histogram adds happen once per chunk rather than once per plane: their fixed costs would
// otherwise outweigh the work on short planes such as a 7 x 7 RoI map's 49.
template <typename scalar_t, typename acc_t>
void param_grad_short_planes(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t count,
                             int64_t stride, int64_t len, acc_t lb, acc_t inv, int n,
                             const acc_t* slopes, acc_t* histogram,
                             PlaneScratch<scalar_t, acc_t>& scratch) {
  const int width = histogram_width(n);
  int64_t filled = 0;
  for (int64_t o = 0; o < count; ++o) {
    if (filled + len > kHistogramChunk) {
      add_chunk(scratch, filled, width, histogram);
      filled = 0;
    }
    const int64_t base = o * stride;
    prepass_plane(g + base, x + base, gx ? gx + base : scratch.gx.data() + filled, len, lb, inv,
                  n, slopes, scratch.chunk.slot.data() + filled,
                  scratch.chunk.pairs.data() + 2 * filled);
    filled += len;
  }
  if (filled > 0) add_chunk(scratch, filled, width, histogram);
}

// The layer-wise backward cuts its one plane into a block per kLayerWiseBlockElements elements,
// at most kMaxLayerWiseBlocks: each block's partial histogram is tiny, and the cap keeps the
// final in-order sum short while leaving tasks for every thread.
constexpr int64_t kLayerWiseBlockElements = 65536;
constexpr int64_t kMaxLayerWiseBlocks = 64;

// Work blocks of the layer-wise plane: a count that depends on the shape only, so that the block
// order of the sums, and the result, never depend on the thread count.
inline int64_t layer_wise_blocks(int64_t numel) {
  return std::max<int64_t>(
      1, std::min<int64_t>(numel / kLayerWiseBlockElements, kMaxLayerWiseBlocks));
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
