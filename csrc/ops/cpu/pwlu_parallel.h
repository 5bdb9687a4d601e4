// How the forward and the input gradient cut x into parallel tasks: planes in chunks, and
// interleaved rows in tasks of one channel group over a block of rows. The cut depends on the
// shape only, never on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "../pwlu_common.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

// Elements per parallel task: large enough to amortise scheduling, small enough to share work.
constexpr int64_t kGrain = 32768;

// Interleaved rows are processed by tasks that own a group of kRowGroup channels (a whole
// number of cache lines of a float row) over a block of rows.
constexpr int64_t kRowGroup = 64;

// Rows of a tile of interleaved rows: 16, the floats of an AVX-512 register, so that a 16 x 16
// tile transposes in registers (avx512_tiles.h).
constexpr int64_t kTileRows = 16;

// Calls fn(base, len, set) over x cut into planes (the whole tensor layer-wise, one channel's
// map channel-wise), in chunks of at most kGrain elements, in parallel.
template <typename Fn>
void parallel_planes(const PwluLayout& layout, bool layer_wise, const Fn& fn) {
  const int64_t plane = layer_wise ? layout.numel() : layout.inner;
  const int64_t planes = layout.numel() / plane;
  const int64_t chunk = std::min<int64_t>(plane, kGrain);
  const int64_t chunks_per_plane = (plane + chunk - 1) / chunk;
  at::parallel_for(0, planes * chunks_per_plane, std::max<int64_t>(1, kGrain / chunk),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t task = begin; task < end; ++task) {
                       const int64_t r = task / chunks_per_plane;
                       const int64_t offset = (task % chunks_per_plane) * chunk;
                       fn(r * plane + offset, std::min(chunk, plane - offset),
                          layer_wise ? 0 : r % layout.channels);
                     }
                   });
}

// Calls fn(first_row, last_row, c0, count) for tasks of rows [first_row, last_row) x channels
// [c0, c0 + count), in parallel. Blocks of rows hold a multiple of kTileRows rows and about
// kGrain elements; their count depends on the shape only.
template <typename Fn>
void parallel_row_groups(const PwluLayout& layout, const Fn& fn) {
  const int64_t channels = layout.channels;
  const int64_t groups = (channels + kRowGroup - 1) / kRowGroup;
  const int64_t rows_per_block = std::max<int64_t>(
      kTileRows, kGrain / std::min(channels, kRowGroup) / kTileRows * kTileRows);
  const int64_t blocks = (layout.outer + rows_per_block - 1) / rows_per_block;
  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task / groups) * rows_per_block;
      const int64_t c0 = (task % groups) * kRowGroup;
      fn(first, std::min(layout.outer, first + rows_per_block), c0,
         std::min(kRowGroup, channels - c0));
    }
  });
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
