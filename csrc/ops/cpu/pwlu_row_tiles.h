// Interleaved rows (channels-last and 2-D inputs) by tasks of one channel group: blocks of 16
// rows go through the AVX-512 tile path (avx512_tiles.h) with tables the task builds for its
// group (GroupTables), everything else row by row (pwlu_loops.h).
#pragma once

#include <cstdint>
#include <memory>

#include "../pwlu_common.h"
#include "../pwlu_element.h"
#include "avx512.h"
#include "pwlu_loops.h"
#include "pwlu_parallel.h"
#include "pwlu_tables.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

// Whether 16 x 16 tiles of interleaved rows can take the AVX-512 tile path.
template <typename scalar_t>
bool tiles_available(int n) {
  return PWLU_AVX512_OR_ZERO(scalar_t, avx512::fits(n), 1) == 1;
}

// The (slope, intercept) tables of one task's channel group, for the tile path, built by the
// task that uses them, so that a group's tables (16 KiB) stay in that core's L1: tables of every
// channel, shared by all cores, would be as large as a wide fc layer's input. Entries padded to
// 32 for avx512::load_table; only for N + 2 <= 32.
template <typename acc_t>
struct GroupTables {
  static constexpr int kEntries = 32;
  int n;
  PwluRange<acc_t> ranges[kRowGroup];
  acc_t slopes[kRowGroup * kEntries];
  acc_t intercepts[kRowGroup * kEntries];

  // Channels [0, count) of p (a view from the group's first channel).
  GroupTables(const RowView<acc_t>& p, int64_t count) : n(p.n) {
    for (int64_t c = 0; c < count; ++c) {
      ranges[c] = p.range(c);
      build_padded_table(p.points + c * (n + 1), ranges[c], p.left_slope[c], p.right_slope[c],
                         kEntries, slopes + c * kEntries, intercepts + c * kEntries);
    }
  }
  const acc_t* slopes_of(int64_t c) const { return slopes + c * kEntries; }
  const acc_t* intercepts_of(int64_t c) const { return intercepts + c * kEntries; }

  // A task's tables, or none where the tile path is unavailable or it has fewer than 16 rows.
  static std::unique_ptr<GroupTables> for_task(bool tiles, int64_t rows,
                                               const RowView<acc_t>& group, int64_t count) {
    if (!tiles || rows < kTileRows) return nullptr;
    return std::make_unique<GroupTables>(group, count);
  }
};

// Rows [first, last) of a channel group: blocks of 16 rows through `tile` (which returns the
// channels it did, a multiple of 16) where there are tables, everything else row by row
// through `row(r, from)` (channels from `from` on).
template <typename Tile, typename Row>
void rows_of_group(int64_t first, int64_t last, int64_t count, bool tiles, const Tile& tile,
                   const Row& row) {
  int64_t r = first;
  for (; tiles && r + kTileRows <= last; r += kTileRows) {
    const int64_t done = tile(r);
    if (done < count) {
      for (int64_t i = 0; i < kTileRows; ++i) row(r + i, done);
    }
  }
  for (; r < last; ++r) row(r, 0);
}

// Interleaved rows by channel groups: tile(base, count, tables) for blocks of 16 rows where the
// tile path is available (returns the channels it did), row(base, count, view) for the rest;
// base is the offset of the group's (or the remaining channels') first element in the row.
template <typename scalar_t, typename acc_t, typename Tile, typename Row>
void for_each_row_group(const PwluLayout& layout, const RowView<acc_t>& view, const Tile& tile,
                        const Row& row) {
  const int64_t channels = layout.channels;
  const bool tiles = tiles_available<scalar_t>(view.n);
  parallel_row_groups(layout, [&](int64_t first, int64_t last, int64_t c0, int64_t count) {
    const RowView<acc_t> group = view.from(c0);
    const auto tab = GroupTables<acc_t>::for_task(tiles, last - first, group, count);
    rows_of_group(
        first, last, count, tab != nullptr,
        [&](int64_t r) { return tile(r * channels + c0, count, *tab); },
        [&](int64_t r, int64_t from) {
          row(r * channels + c0 + from, count - from, group.from(from));
        });
  });
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
