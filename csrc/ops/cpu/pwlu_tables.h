// The parameters in the forms the loops read, built once per call: per-set (slope, intercept)
// tables for planes (CpuTables), and per-channel ranges for interleaved rows (CpuRows,
// read through RowView, pwlu_loops.h), which use the point form instead of tables.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../pwlu_common.h"
#include "../pwlu_element.h"
#include "avx512.h"
#include "pwlu_loops.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

// Distance between two sets' tables: at least 32 entries, so that the AVX-512 path can load a
// whole (zero-padded) table with two plain vector loads (avx512_vectors.h).
inline int table_stride(int n) { return n + 2 <= 32 ? 32 : n + 2; }

// A set's table (build_table) in `entries` >= N + 2 slots: the AVX-512 paths load all of them,
// so the padding must hold numbers. float tables of 32 entries are built 16 entries at a time
// where the AVX-512 path applies.
template <typename acc_t>
void build_padded_table(const acc_t* points, const PwluRange<acc_t>& r, acc_t left_slope,
                        acc_t right_slope, int entries, acc_t* slopes, acc_t* intercepts) {
  if (entries == 32 &&
      PWLU_AVX512_OR_ZERO(acc_t, avx512::fits(r.num_intervals),
                          avx512::build_table32(points, r.left_bound, r.right_bound, r.inv_width,
                                                r.step, left_slope, right_slope,
                                                r.num_intervals, slopes, intercepts)) == 32) {
    return;
  }
  build_table(points, r, left_slope, right_slope, slopes, intercepts);
  std::fill(slopes + r.num_intervals + 2, slopes + entries, acc_t(0));
  std::fill(intercepts + r.num_intervals + 2, intercepts + entries, acc_t(0));
}

// Sets per task of the table build: a table is little work (N + 2 entries), so a task takes
// many.
constexpr int64_t kTableGrain = 256;

// Per-set geometry and (slope, intercept) tables of the plane paths, built once per call.
template <typename acc_t>
struct CpuTables {
  std::vector<PwluRange<acc_t>> ranges;
  std::unique_ptr<acc_t[]> slopes, intercepts;  // table_stride(N) entries per set
  int n;
  int entries;

  explicit CpuTables(const PwluParams& p)
      : ranges(p.num_sets),
        n(static_cast<int>(p.num_intervals)),
        entries(table_stride(n)) {
    const acc_t* points = p.points.data_ptr<acc_t>();
    const acc_t* lb = p.left_bound.data_ptr<acc_t>();
    const acc_t* rb = p.right_bound.data_ptr<acc_t>();
    const acc_t* ls = p.left_slope.data_ptr<acc_t>();
    const acc_t* rs = p.right_slope.data_ptr<acc_t>();
    slopes.reset(new acc_t[p.num_sets * entries]);
    intercepts.reset(new acc_t[p.num_sets * entries]);
    at::parallel_for(0, p.num_sets, kTableGrain, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        ranges[s] = p.range<acc_t>(lb[s], rb[s]);
        build_padded_table(points + s * (n + 1), ranges[s], ls[s], rs[s], entries,
                           slopes.get() + s * entries, intercepts.get() + s * entries);
      }
    });
  }
  bool layer_wise() const { return ranges.size() == 1; }
  const acc_t* slopes_of(int64_t s) const { return slopes.get() + s * entries; }
  const acc_t* intercepts_of(int64_t s) const { return intercepts.get() + s * entries; }
};

// The row paths' per-channel parameters (point form): the raw parameters plus the range of
// every channel (make_range), which is all that is computed per call.
template <typename acc_t>
struct CpuRows {
  std::vector<acc_t> right_bound, inv_width, step;
  std::unique_ptr<bool[]> right_clamped;
  RowView<acc_t> view;

  explicit CpuRows(const PwluParams& p)
      : right_bound(p.num_sets),
        inv_width(p.num_sets),
        step(p.num_sets),
        right_clamped(new bool[p.num_sets]) {
    const acc_t* lb = p.left_bound.data_ptr<acc_t>();
    const acc_t* rb = p.right_bound.data_ptr<acc_t>();
    for (int64_t s = 0; s < p.num_sets; ++s) {
      const PwluRange<acc_t> r = p.range<acc_t>(lb[s], rb[s]);
      right_bound[s] = r.right_bound;
      inv_width[s] = r.inv_width;
      step[s] = r.step;
      right_clamped[s] = r.right_clamped;
    }
    view = {p.points.data_ptr<acc_t>(),    lb,
            right_bound.data(),            inv_width.data(),
            step.data(),                   p.left_slope.data_ptr<acc_t>(),
            p.right_slope.data_ptr<acc_t>(), right_clamped.get(),
            static_cast<int>(p.num_intervals)};
  }
};

// Whether x is processed as planes (tables) rather than interleaved rows (point form).
inline bool uses_planes(const PwluLayout& layout, const PwluParams& p) {
  return p.num_sets == 1 || layout.inner > 1;
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
