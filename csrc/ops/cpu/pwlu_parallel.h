// How the forward and the input gradient cut x into parallel tasks: runs of one parameter set
// in chunks, and interleaved rows in tasks of one channel group over a block of rows. The cut
// depends on the shape only, never on the thread count.
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

// Calls fn(base, len, set) over x cut into runs of one parameter set (the whole tensor
// layer-wise, one plane channel-wise), in chunks of at most kGrain elements, in parallel.
template <typename Fn>
void parallel_runs(const PwluLayout& layout, bool shared, const Fn& fn) {
  const int64_t run = shared ? layout.numel() : layout.inner;
  const int64_t runs = layout.numel() / run;
  const int64_t chunk = std::min<int64_t>(run, kGrain);
  const int64_t chunks_per_run = (run + chunk - 1) / chunk;
  at::parallel_for(0, runs * chunks_per_run, std::max<int64_t>(1, kGrain / chunk),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t task = begin; task < end; ++task) {
                       const int64_t r = task / chunks_per_run;
                       const int64_t offset = (task % chunks_per_run) * chunk;
                       fn(r * run + offset, std::min(chunk, run - offset),
                          shared ? 0 : r % layout.channels);
                     }
                   });
}

// Calls fn(first_row, last_row, c0, count) for tasks of rows [first_row, last_row) x channels
// [c0, c0 + count), in parallel. Blocks of rows hold a multiple of 16 rows and about kGrain
// elements; their count depends on the shape only.
template <typename Fn>
void parallel_row_groups(const PwluLayout& layout, const Fn& fn) {
  const int64_t channels = layout.channels;
  const int64_t groups = (channels + kRowGroup - 1) / kRowGroup;
  const int64_t rows_per_block =
      std::max<int64_t>(16, kGrain / std::min(channels, kRowGroup) / 16 * 16);
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
