// CPU kernels of pwlu_mmdet::pwlu and pwlu_mmdet::pwlu_backward.
//
// x is viewed as (outer, C, inner) in memory order (pwlu_common.h). With inner > 1 (contiguous
// NC*) every run of `inner` elements shares one channel ("plane"); with inner == 1
// (channels-last, or 2-D input) channels interleave within each row of C elements. Layer-wise
// parameters are the same for every element, so the tensor is then processed as one flat run.
// Runs use per-set (slope, intercept) tables; rows use the point form of pwlu_element.h, which
// needs no per-channel table: building 1024 tables cost more than a (64, 1024) fc input.
//
// The element loops are branch-free (pwlu_element.h) and compiled twice, for AVX2 and for the
// baseline ISA, with the better one picked at load time (GCC target_clones), so that the table
// look-ups vectorise as gathers. Parameter-gradient sums run in a fixed order that depends on the
// shape only, never on the thread count: results are reproducible bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../pwlu_common.h"
#include "../pwlu_element.h"
#include "cpu_clones.h"
#include "pwlu_avx512.h"


namespace pwlu_mmdet {
namespace ops {

namespace {

// Elements per parallel task: large enough to amortise scheduling, small enough to share work.
constexpr int64_t kGrain = 32768;

// Distance between two sets' tables: at least 32 entries, so that the AVX-512 path can load a
// whole (zero-padded) table with two plain vector loads (pwlu_avx512.h).
inline int table_stride(int n) { return n + 2 <= 32 ? 32 : n + 2; }

// A set's table (build_table) in `entries` >= N + 2 slots: the AVX-512 paths load all of them,
// so the padding must hold numbers.
template <typename acc_t>
void build_padded_table(const acc_t* points, const PwluRange<acc_t>& r, acc_t left_slope,
                        acc_t right_slope, int entries, acc_t* slopes, acc_t* intercepts) {
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (std::is_same<acc_t, float>::value) {
    if (entries == 32 && avx512::available() && avx512::fits(r.num_intervals)) {
      avx512::build_table32(points, r.left_bound, r.right_bound, r.inv_width, r.step,
                            left_slope, right_slope, r.num_intervals, slopes, intercepts);
      return;
    }
  }
#endif
  build_table(points, r, left_slope, right_slope, slopes, intercepts);
  std::fill(slopes + r.num_intervals + 2, slopes + entries, acc_t(0));
  std::fill(intercepts + r.num_intervals + 2, intercepts + entries, acc_t(0));
}

// Sets with at most this many table entries keep per-set scratch on the stack.
constexpr int kMaxInlineEntries = 64;

// ---------------------------------------------------------------------------- element loops
// A run of `len` elements of one parameter set. The non-template overloads below are the
// cloned (per-ISA) entry points; the templates hold the code.
// Returns whether some output needs forward_value's infinity handling (see
// forward_value_finite); the caller then redoes the run with fix_infinities.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE bool forward_run_impl(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                        int64_t len, acc_t lb, acc_t inv, int n,
                                        const acc_t* __restrict__ slopes,
                                        const acc_t* __restrict__ intercepts) {
  int suspect = 0;
  for (int64_t k = 0; k < len; ++k) {
    const acc_t v =
        forward_value_finite(static_cast<acc_t>(x[k]), lb, inv, n, slopes, intercepts);
    suspect |= (v != v);
    y[k] = from_acc<scalar_t, acc_t>(v);
  }
  return suspect != 0;
}

// A run computed with forward_value in one pass, for the in-place op (pwlu_), where y is x and a
// second pass (fix_infinities) could no longer read x. No __restrict__: x and y may be one array.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void forward_run_exact_impl(const scalar_t* x, scalar_t* y, int64_t len,
                                              acc_t lb, acc_t inv, int n,
                                              const acc_t* __restrict__ slopes,
                                              const acc_t* __restrict__ intercepts) {
  for (int64_t k = 0; k < len; ++k) {
    y[k] = from_acc<scalar_t, acc_t>(
        forward_value(static_cast<acc_t>(x[k]), lb, inv, n, slopes, intercepts));
  }
}

// Per-channel parameters of interleaved rows for the point form, structure of arrays.
template <typename acc_t>
struct RowView {
  const acc_t* points;  // (C, N + 1)
  const acc_t* left_bound;
  const acc_t* right_bound;  // as computed with (make_range)
  const acc_t* inv_width;
  const acc_t* step;
  const acc_t* left_slope;
  const acc_t* right_slope;
  const bool* right_clamped;
  int n;

  PwluRange<acc_t> range(int64_t c) const {
    return {left_bound[c], right_bound[c], inv_width[c], step[c], n, right_clamped[c]};
  }
  // The same view from channel c on.
  RowView from(int64_t c) const {
    return {points + c * (n + 1), left_bound + c, right_bound + c, inv_width + c, step + c,
            left_slope + c,       right_slope + c, right_clamped + c, n};
  }
};

// A row of C interleaved channels, channel c using set c. No __restrict__: the in-place op
// passes y == x (each element is read before it is written).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void forward_row_impl(const scalar_t* x, scalar_t* y, int64_t channels,
                                        const RowView<acc_t>& p) {
  for (int64_t c = 0; c < channels; ++c) {
    y[c] = from_acc<scalar_t, acc_t>(forward_value_points(
        static_cast<acc_t>(x[c]), p.points + c * (p.n + 1), p.range(c), p.left_slope[c],
        p.right_slope[c]));
  }
}

// Rare path: NaN outputs of forward_value_finite are recomputed exactly.
template <typename scalar_t, typename acc_t>
void fix_infinities(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,
                    const acc_t* slopes, const acc_t* intercepts) {
  for (int64_t k = 0; k < len; ++k) {
    y[k] = from_acc<scalar_t, acc_t>(
        forward_value(static_cast<acc_t>(x[k]), lb, inv, n, slopes, intercepts));
  }
}

// grad_x = g * S_j for a run of one set.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void input_grad_run_impl(const scalar_t* __restrict__ g,
                                           const scalar_t* __restrict__ x,
                                           scalar_t* __restrict__ gx, int64_t len, acc_t lb,
                                           acc_t inv, int n, const acc_t* __restrict__ slopes) {
  for (int64_t k = 0; k < len; ++k) {
    const int j = table_entry(interval_coordinate(static_cast<acc_t>(x[k]), lb, inv), n);
    gx[k] = from_acc<scalar_t, acc_t>(static_cast<acc_t>(g[k]) * slopes[j]);
  }
}

template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void input_grad_row_impl(const scalar_t* __restrict__ g,
                                           const scalar_t* __restrict__ x,
                                           scalar_t* __restrict__ gx, int64_t channels,
                                           const RowView<acc_t>& p) {
  for (int64_t c = 0; c < channels; ++c) {
    const PwluRange<acc_t> r = p.range(c);
    const int j = table_entry(
        interval_coordinate(static_cast<acc_t>(x[c]), r.left_bound, r.inv_width), p.n);
    const acc_t slope =
        point_piece(p.points + c * (p.n + 1), j, r, p.left_slope[c], p.right_slope[c]).slope;
    gx[c] = from_acc<scalar_t, acc_t>(static_cast<acc_t>(g[c]) * slope);
  }
}

#define PWLU_DEFINE_CLONED_LOOPS(scalar_t, acc_t)                                               \
  PWLU_CPU_CLONES bool forward_run(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb,     \
                                   acc_t inv, int n, const acc_t* s, const acc_t* o) {          \
    return forward_run_impl<scalar_t, acc_t>(x, y, len, lb, inv, n, s, o);                      \
  }                                                                                             \
  PWLU_CPU_CLONES void forward_run_exact(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, \
                                         acc_t inv, int n, const acc_t* s, const acc_t* o) {    \
    forward_run_exact_impl<scalar_t, acc_t>(x, y, len, lb, inv, n, s, o);                       \
  }                                                                                             \
  PWLU_CPU_CLONES void forward_row(const scalar_t* x, scalar_t* y, int64_t channels,           \
                                   const RowView<acc_t>& p) {                                   \
    forward_row_impl<scalar_t, acc_t>(x, y, channels, p);                                       \
  }                                                                                             \
  PWLU_CPU_CLONES void input_grad_run(const scalar_t* g, const scalar_t* x, scalar_t* gx,      \
                                      int64_t len, acc_t lb, acc_t inv, int n,                  \
                                      const acc_t* s) {                                         \
    input_grad_run_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s);                         \
  }                                                                                             \
  PWLU_CPU_CLONES void input_grad_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,      \
                                      int64_t channels, const RowView<acc_t>& p) {              \
    input_grad_row_impl<scalar_t, acc_t>(g, x, gx, channels, p);                                \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_LOOPS)
#undef PWLU_DEFINE_CLONED_LOOPS

// Runs of one set of float or bfloat16 elements take the AVX-512 table-in-registers path where
// the CPU has it and the table fits (pwlu_avx512.h); the generic loops finish the tail.
template <typename scalar_t>
constexpr bool kHasAvx512Path =
    std::is_same<scalar_t, float>::value || std::is_same<scalar_t, c10::BFloat16>::value;

// Returns whether the caller must redo the run with fix_infinities (never when `exact`, the
// in-place case, whose generic tail takes forward_run_exact).
template <typename scalar_t, typename acc_t>
bool forward_run_fast(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,
                      const acc_t* s, const acc_t* o, bool exact) {
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::fits(n)) {
      const int64_t done = avx512::forward_run(x, y, len, lb, inv, n, s, o);
      x += done;
      y += done;
      len -= done;
    }
  }
#endif
  if (exact) {
    forward_run_exact(x, y, len, lb, inv, n, s, o);
    return false;
  }
  return forward_run(x, y, len, lb, inv, n, s, o);
}

template <typename scalar_t, typename acc_t>
void forward_row_fast(const scalar_t* x, scalar_t* y, int64_t channels,
                      const RowView<acc_t>& p) {
  int64_t done = 0;
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::row_fits(channels, p.n)) {
      done = avx512::forward_row(x, y, channels, p);
    }
  }
#endif
  if (done < channels) forward_row(x + done, y + done, channels - done, p.from(done));
}

template <typename scalar_t, typename acc_t>
void input_grad_run_fast(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len,
                         acc_t lb, acc_t inv, int n, const acc_t* s) {
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::fits(n)) {
      const int64_t done = avx512::input_grad_run(g, x, gx, len, lb, inv, n, s);
      g += done;
      x += done;
      gx += done;
      len -= done;
    }
  }
#endif
  input_grad_run(g, x, gx, len, lb, inv, n, s);
}

template <typename scalar_t, typename acc_t>
void input_grad_row_fast(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,
                         const RowView<acc_t>& p) {
  int64_t done = 0;
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::row_fits(channels, p.n)) {
      done = avx512::input_grad_row(g, x, gx, channels, p);
    }
  }
#endif
  if (done < channels) {
    input_grad_row(g + done, x + done, gx + done, channels - done, p.from(done));
  }
}

// Interleaved rows are processed by tasks that own a group of kRowGroup channels (a whole
// number of cache lines of a float row) over a block of rows.
constexpr int64_t kRowGroup = 64;

// Whether 16 x 16 tiles of interleaved rows can take the AVX-512 tile path.
template <typename scalar_t>
bool tiles_available(int n) {
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) return avx512::available() && avx512::fits(n);
#endif
  return false;
}

// The (slope, intercept) tables of one task's channel group, for the tile path, built by the
// task that uses them: a group's tables (16 KiB) stay in that core's L1, where tables of every
// channel shared by all cores were as large as a (64, 1024) input and were slower than no
// tables. Entries padded to 32 for avx512::load_table; only for N + 2 <= 32.
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
    if (!tiles || rows < 16) return nullptr;
    return std::make_unique<GroupTables>(group, count);
  }
};

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

// Rows [first, last) of a channel group: blocks of 16 rows through `tile` (which returns the
// channels it did, a multiple of 16) where there are tables, everything else row by row
// through `row(r, from)` (channels from `from` on).
template <typename Tile, typename Row>
void rows_of_group(int64_t first, int64_t last, int64_t count, bool tiles, const Tile& tile,
                   const Row& row) {
  int64_t r = first;
  for (; tiles && r + 16 <= last; r += 16) {
    const int64_t done = tile(r);
    if (done < count) {
      for (int64_t i = 0; i < 16; ++i) row(r + i, done);
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

// ------------------------------------------------------------------- parameter gradients
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

// Prepass of a run of one set: slot = 2 j.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void prepass_run_impl(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ gx, int64_t len, acc_t lb,
                                        acc_t inv, int n, const acc_t* __restrict__ slopes,
                                        int32_t* __restrict__ slot, acc_t* __restrict__ pairs) {
  for (int64_t k = 0; k < len; ++k) {
    const acc_t gv = static_cast<acc_t>(g[k]);
    const acc_t t = interval_coordinate(static_cast<acc_t>(x[k]), lb, inv);
    const int j = table_entry(t, n);
    gx[k] = from_acc<scalar_t, acc_t>(gv * slopes[j]);
    slot[k] = 2 * j;
    histogram_addends(gv, t, t - entry_base<acc_t>(j, n), &pairs[2 * k], &pairs[2 * k + 1]);
  }
}

// Prepass of channels [first, first + channels) of a row (p viewed from `first`):
// slot = c * W + 2 j (W = histogram_width(N)), the point form's slope for grad_x.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void prepass_row_impl(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ gx, int64_t channels,
                                        int64_t first, const RowView<acc_t>& p,
                                        int32_t* __restrict__ slot,
                                        acc_t* __restrict__ pairs) {
  const int n = p.n;
  const int width = histogram_width(n);
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t gv = static_cast<acc_t>(g[c]);
    const PwluRange<acc_t> r = p.range(c);
    const acc_t t = interval_coordinate(static_cast<acc_t>(x[c]), r.left_bound, r.inv_width);
    const int j = table_entry(t, n);
    const acc_t slope =
        point_piece(p.points + c * (n + 1), j, r, p.left_slope[c], p.right_slope[c]).slope;
    gx[c] = from_acc<scalar_t, acc_t>(gv * slope);
    slot[c] = static_cast<int32_t>(first + c) * width + 2 * j;
    histogram_addends(gv, t, t - entry_base<acc_t>(j, n), &pairs[2 * c], &pairs[2 * c + 1]);
  }
}

#define PWLU_DEFINE_CLONED_PREPASS(scalar_t, acc_t)                                            \
  PWLU_CPU_CLONES void prepass_run(const scalar_t* g, const scalar_t* x, scalar_t* gx,        \
                                   int64_t len, acc_t lb, acc_t inv, int n, const acc_t* s,    \
                                   int32_t* slot, acc_t* pairs) {                              \
    prepass_run_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s, slot, pairs);              \
  }                                                                                            \
  PWLU_CPU_CLONES void prepass_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,        \
                                   int64_t channels, int64_t first, const RowView<acc_t>& p,   \
                                   int32_t* slot, acc_t* pairs) {                              \
    prepass_row_impl<scalar_t, acc_t>(g, x, gx, channels, first, p, slot, pairs);              \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_PREPASS)
#undef PWLU_DEFINE_CLONED_PREPASS

template <typename scalar_t, typename acc_t>
void prepass_run_fast(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                      acc_t inv, int n, const acc_t* s, int32_t* slot, acc_t* pairs) {
  int64_t done = 0;
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::fits(n)) {
      done = avx512::prepass_run(g, x, gx, len, lb, inv, n, s, slot, pairs);
    }
  }
#endif
  if (done < len) {
    prepass_run(g + done, x + done, gx + done, len - done, lb, inv, n, s, slot + done,
                pairs + 2 * done);
  }
}

template <typename scalar_t, typename acc_t>
void prepass_row_fast(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,
                      const RowView<acc_t>& p, int32_t* slot, acc_t* pairs) {
  int64_t done = 0;
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    if (avx512::available() && avx512::row_fits(channels, p.n) &&
        channels * histogram_width(p.n) < (int64_t(1) << 31)) {
      done = avx512::prepass_row(g, x, gx, channels, p, slot, pairs);
    }
  }
#endif
  if (done < channels) {
    prepass_row(g + done, x + done, gx + done, channels - done, done, p.from(done), slot + done,
                pairs + 2 * done);
  }
}

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
// scatter and the histogram adds happen once per piece rather than once per run (a 7 x 7 RoI
// map has 49-element planes, where those fixed costs were most of the backward).
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

// ---------------------------------------------------------------------------------- tables
// Per-set geometry and (slope, intercept) tables of the run paths, built once per call.
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
    at::parallel_for(0, p.num_sets, 256, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        ranges[s] = p.range<acc_t>(lb[s], rb[s]);
        build_padded_table(points + s * (n + 1), ranges[s], ls[s], rs[s], entries,
                           slopes.get() + s * entries, intercepts.get() + s * entries);
      }
    });
  }
  bool shared() const { return ranges.size() == 1; }
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

// Whether x is processed as runs of one set (tables) rather than interleaved rows (point form).
inline bool uses_runs(const PwluLayout& layout, const PwluParams& p) {
  return p.num_sets == 1 || layout.inner > 1;
}

// ----------------------------------------------------------------------------------- forward
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

// y may be x (the in-place op): every path reads an element before writing it.
template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const PwluLayout& layout,
                    const PwluParams& params) {
  const bool in_place = static_cast<const void*>(x) == static_cast<const void*>(y);
  if (uses_runs(layout, params)) {
    const CpuTables<acc_t> tab(params);
    parallel_runs(layout, tab.shared(), [&](int64_t base, int64_t len, int64_t s) {
      const acc_t lb = tab.ranges[s].left_bound, inv = tab.ranges[s].inv_width;
      if (forward_run_fast(x + base, y + base, len, lb, inv, tab.n, tab.slopes_of(s),
                           tab.intercepts_of(s), /*exact=*/in_place)) {
        fix_infinities(x + base, y + base, len, lb, inv, tab.n, tab.slopes_of(s),
                       tab.intercepts_of(s));
      }
    });
    return;
  }
  const CpuRows<acc_t> rows(params);
  for_each_row_group<scalar_t>(
      layout, rows.view,
      [&](int64_t base, int64_t count, const GroupTables<acc_t>& tab) -> int64_t {
#ifdef PWLU_HAVE_AVX512_PATH
        if constexpr (kHasAvx512Path<scalar_t>) {
          return avx512::forward_tile(x + base, y + base, layout.channels, count, tab);
        }
#endif
        return 0;
      },
      [&](int64_t base, int64_t count, const RowView<acc_t>& p) {
        forward_row_fast(x + base, y + base, count, p);
      });
}

// -------------------------------------------------------------------------------- backward
// grad_x only (frozen parameters): as the forward, with g * S_j.
template <typename scalar_t, typename acc_t>
void input_grad_kernel(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                       const PwluLayout& layout, const PwluParams& params) {
  if (uses_runs(layout, params)) {
    const CpuTables<acc_t> tab(params);
    parallel_runs(layout, tab.shared(), [&](int64_t base, int64_t len, int64_t s) {
      input_grad_run_fast(g + base, x + base, gx + base, len, tab.ranges[s].left_bound,
                          tab.ranges[s].inv_width, tab.n, tab.slopes_of(s));
    });
    return;
  }
  const CpuRows<acc_t> rows(params);
  for_each_row_group<scalar_t>(
      layout, rows.view,
      [&](int64_t base, int64_t count, const GroupTables<acc_t>& tab) -> int64_t {
#ifdef PWLU_HAVE_AVX512_PATH
        if constexpr (kHasAvx512Path<scalar_t>) {
          return avx512::input_grad_tile(g + base, x + base, gx + base, layout.channels, count,
                                         tab);
        }
#endif
        return 0;
      },
      [&](int64_t base, int64_t count, const RowView<acc_t>& p) {
        input_grad_row_fast(g + base, x + base, gx + base, count, p);
      });
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

// Runs: grad_x (gx may be null) and the per-set histograms, histograms[s * W .. s * W + W),
// W = histogram_width(N); their parameter gradients into out.
template <typename scalar_t, typename acc_t>
void param_grad_runs(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                     const PwluLayout& layout, const CpuTables<acc_t>& tab,
                     const ParamGradOut<acc_t>& out) {
  const int n = tab.n;
  const int width = histogram_width(n);
  const int64_t channels = layout.channels;
  if (!tab.shared()) {
    // One task per channel; within it, plane histograms are added in plane order (planes
    // shorter than a piece are packed into pieces).
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(width), hist(width);
      RunScratch<scalar_t, acc_t> scratch(std::min(kPiece, layout.outer * layout.inner), n);
      for (int64_t c = begin; c < end; ++c) {
        std::fill(hist.begin(), hist.end(), acc_t(0));
        if (layout.inner < kPiece) {
          const int64_t first = c * layout.inner;
          param_grad_short_runs(g + first, x + first, gx ? gx + first : nullptr, layout.outer,
                                channels * layout.inner, layout.inner, tab.ranges[c].left_bound,
                                tab.ranges[c].inv_width, n, tab.slopes_of(c), hist.data(),
                                scratch);
          histogram_to_param_grads(hist.data(), tab.slopes_of(c), tab.ranges[c], out, c);
          continue;
        }
        for (int64_t o = 0; o < layout.outer; ++o) {
          const int64_t base = (o * channels + c) * layout.inner;
          std::fill(plane.begin(), plane.end(), acc_t(0));
          param_grad_run(g + base, x + base, gx ? gx + base : nullptr, layout.inner,
                         tab.ranges[c].left_bound, tab.ranges[c].inv_width, n,
                         tab.slopes_of(c), plane.data(), scratch);
          for (int w = 0; w < width; ++w) hist[w] += plane[w];
        }
        histogram_to_param_grads(hist.data(), tab.slopes_of(c), tab.ranges[c], out, c);
      }
    });
    return;
  }
  // Layer-wise: one flat run cut into blocks.
  const int64_t numel = layout.numel();
  const int64_t blocks = flat_blocks(numel);
  const int64_t per_block = (numel + blocks - 1) / blocks;
  std::vector<acc_t> block_hist(blocks * width, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * per_block;
      const int64_t last = std::min(numel, first + per_block);
      if (first >= last) continue;
      RunScratch<scalar_t, acc_t> scratch(std::min(kPiece, last - first), n);
      param_grad_run(g + first, x + first, gx ? gx + first : nullptr, last - first,
                     tab.ranges[0].left_bound, tab.ranges[0].inv_width, n, tab.slopes_of(0),
                     block_hist.data() + b * width, scratch);
    }
  });
  std::vector<acc_t> hist(width, acc_t(0));
  add_blocks(block_hist, blocks, width, hist.data());
  histogram_to_param_grads(hist.data(), tab.slopes_of(0), tab.ranges[0], out, 0);
}

// Interleaved rows: as param_grad_runs, with the point form (tiles: tables). Tasks own groups of
// kRowGroup channels over a block of rows, so that the histograms need no per-thread copies;
// blocks of rows (a count that depends on the shape only) are added in block order. Adjacent
// elements are different channels: the scatter has no chains to break.
template <typename scalar_t, typename acc_t>
void param_grad_rows(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                     const PwluLayout& layout, const CpuRows<acc_t>& rows,
                     const ParamGradOut<acc_t>& out) {
  const RowView<acc_t>& p = rows.view;
  const int n = p.n;
  const int width = histogram_width(n);
  const int64_t channels = layout.channels;
  const int64_t span = channels * width;
  const int64_t groups = (channels + kRowGroup - 1) / kRowGroup;
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>({layout.numel() >> 19, 32, layout.outer}));
  const int64_t rows_per_block = (layout.outer + blocks - 1) / blocks;
  std::vector<acc_t> block_hist(blocks * span, acc_t(0));

  auto convert = [&](const acc_t* hist, int64_t first, int64_t last) {
    acc_t slopes[kMaxInlineEntries];
    std::vector<acc_t> heap(n + 2 > kMaxInlineEntries ? n + 2 : 0);
    acc_t* s = heap.empty() ? slopes : heap.data();
    for (int64_t c = first; c < last; ++c) {
      const PwluRange<acc_t> r = p.range(c);
      build_slopes(p.points + c * (n + 1), r, p.left_slope[c], p.right_slope[c], s);
      histogram_to_param_grads(hist + c * width, s, r, out, c);
    }
  };

  const bool tiles = tiles_available<scalar_t>(n);
  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    PieceScratch<acc_t> scratch(16 * kRowGroup);
    std::vector<scalar_t> gx_scratch(gx ? 0 : 16 * kRowGroup);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups;
      const int64_t c0 = (task % groups) * kRowGroup;
      const int64_t count = std::min(kRowGroup, channels - c0);
      const RowView<acc_t> group = p.from(c0);
      acc_t* hist = block_hist.data() + b * span + c0 * width;
      const int64_t last = std::min(layout.outer, (b + 1) * rows_per_block);
      // One row through the row path, into the channels from `first` on.
      auto row = [&](int64_t r, int64_t first) {
        const int64_t base = r * channels + c0 + first;
        prepass_row_fast(g + base, x + base, gx ? gx + base : gx_scratch.data(), count - first,
                         group.from(first), scratch.slot.data(), scratch.pairs.data());
        scatter_piece(scratch, count - first, hist + first * width);
      };
      const int64_t first_row = b * rows_per_block;
      const auto tab = GroupTables<acc_t>::for_task(tiles, last - first_row, group, count);
      // Each channel still sees its rows in order.
      rows_of_group(
          first_row, last, count, tab != nullptr,
          [&](int64_t r) -> int64_t {
#ifdef PWLU_HAVE_AVX512_PATH
            if constexpr (kHasAvx512Path<scalar_t>) {
              const int64_t base = r * channels + c0;
              const int64_t done = avx512::prepass_tile(
                  g + base, x + base, channels, gx ? gx + base : gx_scratch.data(),
                  gx ? channels : count, count, *tab, scratch.slot.data(),
                  scratch.pairs.data());
              scatter_tile(scratch, done, hist);
              return done;
            }
#endif
            return 0;
          },
          row);
      // With one block of rows the group's sums are complete.
      if (blocks == 1) convert(block_hist.data(), c0, c0 + count);
    }
  });
  if (blocks == 1) return;
  std::vector<acc_t> sum(span, acc_t(0));
  add_blocks(block_hist, blocks, span, sum.data());
  at::parallel_for(0, channels, kRowGroup,
                   [&](int64_t begin, int64_t end) { convert(sum.data(), begin, end); });
}

at::Tensor pwlu_forward_cpu(const at::Tensor& x, const at::Tensor& points,
                            const at::Tensor& left_bound, const at::Tensor& right_bound,
                            const at::Tensor& left_slope, const at::Tensor& right_slope,
                            double range_eps) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  at::Tensor y = at::empty_like(call.x, call.x.options(), call.format);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    forward_kernel<scalar_t, acc_t>(
                                        call.x.const_data_ptr<scalar_t>(),
                                        y.data_ptr<scalar_t>(), call.layout, call.params);
                                  });
  return y;
}

// pwlu_: the forward written into x, for inference (no output allocation; ReLU's counterpart
// is relu_). An x that is not dense in its memory format is computed out of place and copied.
void pwlu_inplace_cpu(at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                      const at::Tensor& right_bound, const at::Tensor& left_slope,
                      const at::Tensor& right_slope, double range_eps) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  if (x.numel() == 0) return;
  if (!call.x.is_same(x)) {
    x.copy_(pwlu_forward_cpu(x, points, left_bound, right_bound, left_slope, right_slope,
                             range_eps));
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_inplace_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    scalar_t* data = x.data_ptr<scalar_t>();
                                    forward_kernel<scalar_t, acc_t>(data, data, call.layout,
                                                                    call.params);
                                  });
}

PwluGrads pwlu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                            const at::Tensor& points, const at::Tensor& left_bound,
                            const at::Tensor& right_bound, const at::Tensor& left_slope,
                            const at::Tensor& right_slope, double range_eps, bool input_grad,
                            bool param_grads) {
  const PwluBackwardCall call = prepare_backward(grad_output, x, points, left_bound, right_bound,
                                                 left_slope, right_slope, range_eps, input_grad,
                                                 param_grads);
  if (x.numel() > 0 && (input_grad || param_grads)) {
    const PwluLayout& layout = call.layout;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* gp = call.grad_output.const_data_ptr<scalar_t>();
          const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
          scalar_t* gxp = input_grad ? call.grad_x.data_ptr<scalar_t>() : nullptr;
          if (!param_grads) {
            input_grad_kernel<scalar_t, acc_t>(gp, xp, gxp, layout, call.params);
            return;
          }
          const ParamGradOut<acc_t> out = call.param_grad_out<acc_t>();
          if (uses_runs(layout, call.params)) {
            param_grad_runs<scalar_t, acc_t>(gp, xp, gxp, layout, CpuTables<acc_t>(call.params),
                                             out);
          } else {
            param_grad_rows<scalar_t, acc_t>(gp, xp, gxp, layout, CpuRows<acc_t>(call.params),
                                             out);
          }
        });
  }
  return pack_grads(call, points);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CPU, m) {
  m.impl("pwlu", &pwlu_forward_cpu);
  m.impl("pwlu_", &pwlu_inplace_cpu);
  m.impl("pwlu_backward", &pwlu_backward_cpu);
}

}  // namespace ops
}  // namespace pwlu_mmdet
