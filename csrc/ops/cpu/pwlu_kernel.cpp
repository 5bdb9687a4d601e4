// CPU kernels of pwlu_mmdet::pwlu and pwlu_mmdet::pwlu_backward.
//
// x is viewed as (outer, C, inner) in memory order (pwlu_common.h). With inner > 1 (contiguous
// NC*) every run of `inner` elements shares one channel ("plane"); with inner == 1
// (channels-last, or 2-D input) channels interleave within each row of C elements. Layer-wise
// parameters are the same for every element, so the tensor is then processed as one flat run.
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
#include <type_traits>
#include <vector>

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

// A row of C interleaved channels, channel c using set c.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE bool forward_row_impl(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                        int64_t channels, const acc_t* __restrict__ lbs,
                                        const acc_t* __restrict__ invs, int n,
                                        const acc_t* __restrict__ slopes,
                                        const acc_t* __restrict__ intercepts) {
  const int entries = table_stride(n);
  int suspect = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t v = forward_value_finite(static_cast<acc_t>(x[c]), lbs[c], invs[c], n,
                                         slopes + c * entries, intercepts + c * entries);
    suspect |= (v != v);
    y[c] = from_acc<scalar_t, acc_t>(v);
  }
  return suspect != 0;
}

// Rare path: NaN outputs of forward_value_finite are recomputed exactly.
template <typename scalar_t, typename acc_t>
void fix_infinities(const scalar_t* x, scalar_t* y, int64_t len, int64_t set_stride,
                    const acc_t* lbs, const acc_t* invs, int n, const acc_t* slopes,
                    const acc_t* intercepts) {
  const int entries = table_stride(n);
  for (int64_t k = 0; k < len; ++k) {
    const int64_t s = set_stride ? k % set_stride : 0;
    y[k] = from_acc<scalar_t, acc_t>(forward_value(static_cast<acc_t>(x[k]), lbs[s], invs[s], n,
                                               slopes + s * entries, intercepts + s * entries));
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
                                           const acc_t* __restrict__ lbs,
                                           const acc_t* __restrict__ invs, int n,
                                           const acc_t* __restrict__ slopes) {
  const int entries = table_stride(n);
  for (int64_t c = 0; c < channels; ++c) {
    const int j = table_entry(interval_coordinate(static_cast<acc_t>(x[c]), lbs[c], invs[c]), n);
    gx[c] = from_acc<scalar_t, acc_t>(static_cast<acc_t>(g[c]) * slopes[c * entries + j]);
  }
}

#define PWLU_DEFINE_CLONED_LOOPS(scalar_t, acc_t)                                               \
  PWLU_CPU_CLONES bool forward_run(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb,     \
                                   acc_t inv, int n, const acc_t* s, const acc_t* o) {          \
    return forward_run_impl<scalar_t, acc_t>(x, y, len, lb, inv, n, s, o);                      \
  }                                                                                             \
  PWLU_CPU_CLONES bool forward_row(const scalar_t* x, scalar_t* y, int64_t channels,           \
                                   const acc_t* lbs, const acc_t* invs, int n, const acc_t* s,  \
                                   const acc_t* o) {                                            \
    return forward_row_impl<scalar_t, acc_t>(x, y, channels, lbs, invs, n, s, o);               \
  }                                                                                             \
  PWLU_CPU_CLONES void input_grad_run(const scalar_t* g, const scalar_t* x, scalar_t* gx,      \
                                      int64_t len, acc_t lb, acc_t inv, int n,                  \
                                      const acc_t* s) {                                         \
    input_grad_run_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s);                         \
  }                                                                                             \
  PWLU_CPU_CLONES void input_grad_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,      \
                                      int64_t channels, const acc_t* lbs, const acc_t* invs,    \
                                      int n, const acc_t* s) {                                  \
    input_grad_row_impl<scalar_t, acc_t>(g, x, gx, channels, lbs, invs, n, s);                  \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_LOOPS)
#undef PWLU_DEFINE_CLONED_LOOPS

// Runs of one set of float or bfloat16 elements take the AVX-512 table-in-registers path where
// the CPU has it and the table fits (pwlu_avx512.h); the generic loops finish the tail.
template <typename scalar_t>
constexpr bool kHasAvx512Path =
    std::is_same<scalar_t, float>::value || std::is_same<scalar_t, c10::BFloat16>::value;

template <typename scalar_t, typename acc_t>
bool forward_run_fast(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,
                      const acc_t* s, const acc_t* o) {
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
  return forward_run(x, y, len, lb, inv, n, s, o);
}

template <typename scalar_t, typename acc_t>
bool forward_row_fast(const scalar_t* x, scalar_t* y, int64_t channels, const acc_t* lbs,
                      const acc_t* invs, int n, const acc_t* s, const acc_t* o) {
  int64_t done = 0;
#ifdef PWLU_HAVE_AVX512_PATH
  if constexpr (kHasAvx512Path<scalar_t>) {
    // The table index c * stride + j must fit an int32 lane.
    if (avx512::available() && channels * table_stride(n) < (int64_t(1) << 31)) {
      done = avx512::forward_row(x, y, channels, lbs, invs, n, table_stride(n), s, o);
    }
  }
#endif
  if (done == channels) return false;
  // The generic loop indexes its tables from the first channel it is given.
  const int stride = table_stride(n);
  return forward_row(x + done, y + done, channels - done, lbs + done, invs + done, n,
                     s + done * stride, o + done * stride);
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

// ------------------------------------------------------------------- parameter gradients
// Pieces of at most kPiece elements go through two loops: a vectorised prepass writes grad_x
// and, per element, its histogram slot and its two addends (g and g * u, pwlu_element.h); a
// scalar loop then does the scatter-adds, which no ISA vectorises well. Sums of one piece stay
// short enough for float precision; pieces are added into the run's histogram in order.
constexpr int64_t kPiece = 2048;

template <typename acc_t>
struct PieceScratch {
  std::vector<int32_t> slot;
  std::vector<acc_t> g, gu;
  explicit PieceScratch(int64_t size) : slot(size), g(size), gu(size) {}
};

// Prepass of a run of one set: slot = j.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void prepass_run_impl(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ gx, int64_t len, acc_t lb,
                                        acc_t inv, int n, const acc_t* __restrict__ slopes,
                                        int32_t* __restrict__ slot, acc_t* __restrict__ ga,
                                        acc_t* __restrict__ gu) {
  for (int64_t k = 0; k < len; ++k) {
    const acc_t gv = static_cast<acc_t>(g[k]);
    const acc_t t = interval_coordinate(static_cast<acc_t>(x[k]), lb, inv);
    const int j = table_entry(t, n);
    gx[k] = from_acc<scalar_t, acc_t>(gv * slopes[j]);
    slot[k] = j;
    ga[k] = gv;
    gu[k] = gv * (t - entry_base<acc_t>(j, n));
  }
}

// Prepass of a row of C interleaved channels: slot = c * W + j (W = histogram_width(N)).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void prepass_row_impl(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ gx, int64_t channels,
                                        const acc_t* __restrict__ lbs,
                                        const acc_t* __restrict__ invs, int n,
                                        const acc_t* __restrict__ slopes,
                                        int32_t* __restrict__ slot, acc_t* __restrict__ ga,
                                        acc_t* __restrict__ gu) {
  const int entries = table_stride(n);
  const int width = histogram_width(n);
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t gv = static_cast<acc_t>(g[c]);
    const acc_t t = interval_coordinate(static_cast<acc_t>(x[c]), lbs[c], invs[c]);
    const int j = table_entry(t, n);
    gx[c] = from_acc<scalar_t, acc_t>(gv * slopes[c * entries + j]);
    slot[c] = static_cast<int32_t>(c) * width + j;
    ga[c] = gv;
    gu[c] = gv * (t - entry_base<acc_t>(j, n));
  }
}

#define PWLU_DEFINE_CLONED_PREPASS(scalar_t, acc_t)                                            \
  PWLU_CPU_CLONES void prepass_run(const scalar_t* g, const scalar_t* x, scalar_t* gx,        \
                                   int64_t len, acc_t lb, acc_t inv, int n, const acc_t* s,    \
                                   int32_t* slot, acc_t* ga, acc_t* gu) {                      \
    prepass_run_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s, slot, ga, gu);             \
  }                                                                                            \
  PWLU_CPU_CLONES void prepass_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,        \
                                   int64_t channels, const acc_t* lbs, const acc_t* invs,      \
                                   int n, const acc_t* s, int32_t* slot, acc_t* ga,            \
                                   acc_t* gu) {                                                \
    prepass_row_impl<scalar_t, acc_t>(g, x, gx, channels, lbs, invs, n, s, slot, ga, gu);      \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_PREPASS)
#undef PWLU_DEFINE_CLONED_PREPASS

// The scatter-adds of a prepassed piece: A[slot] += g, B[slot] += g * u (B at offset N + 2).
// Neighbouring elements of one set mostly share a slot, so a single histogram would chain every
// add on the previous one through memory: `copies` interleaved histograms (element k into copy
// k % copies, added at the end in copy order) keep that many adds in flight.
template <typename acc_t>
void scatter_piece(const PieceScratch<acc_t>& p, int64_t len, int n, int copies, int64_t span,
                   acc_t* histogram, std::vector<acc_t>& copy_buf) {
  const int64_t b_offset = n + 2;
  if (copies == 1) {
    for (int64_t k = 0; k < len; ++k) {
      histogram[p.slot[k]] += p.g[k];
      histogram[p.slot[k] + b_offset] += p.gu[k];
    }
    return;
  }
  copy_buf.assign(copies * span, acc_t(0));
  int64_t k = 0;
  for (; k + copies <= len; k += copies) {
    for (int c = 0; c < copies; ++c) {
      acc_t* h = copy_buf.data() + c * span;
      h[p.slot[k + c]] += p.g[k + c];
      h[p.slot[k + c] + b_offset] += p.gu[k + c];
    }
  }
  for (; k < len; ++k) {
    copy_buf[p.slot[k]] += p.g[k];
    copy_buf[p.slot[k] + b_offset] += p.gu[k];
  }
  for (int c = 0; c < copies; ++c) {
    for (int64_t w = 0; w < span; ++w) histogram[w] += copy_buf[c * span + w];
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

// grad_x (into gx, or scratch when null) and the histogram of a run of one set, by pieces.
template <typename scalar_t, typename acc_t>
void param_grad_run(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                    acc_t inv, int n, const acc_t* slopes, acc_t* histogram,
                    RunScratch<scalar_t, acc_t>& scratch) {
  const int width = histogram_width(n);
  std::vector<acc_t>& piece_hist = scratch.piece_hist;
  for (int64_t start = 0; start < len; start += kPiece) {
    const int64_t m = std::min(kPiece, len - start);
    prepass_run(g + start, x + start, gx ? gx + start : scratch.gx.data(), m, lb, inv, n,
                slopes, scratch.piece.slot.data(), scratch.piece.g.data(),
                scratch.piece.gu.data());
    std::fill(piece_hist.begin(), piece_hist.end(), acc_t(0));
    scatter_piece(scratch.piece, m, n, /*copies=*/m >= 64 ? 4 : 1, width, piece_hist.data(),
                  scratch.copies);
    for (int w = 0; w < width; ++w) histogram[w] += piece_hist[w];
  }
}

// ---------------------------------------------------------------------------------- tables
// Per-set geometry (structure of arrays, for the row loops) and (slope, intercept) tables.
template <typename acc_t>
struct CpuTables {
  std::vector<PwluRange<acc_t>> ranges;
  std::vector<acc_t> lbs, invs, slopes, intercepts;
  int n;
  int entries;  // table_stride(N): N + 2 entries, zero-padded

  explicit CpuTables(const PwluParams& p)
      : n(static_cast<int>(p.num_intervals)), entries(table_stride(n)) {
    const acc_t* points = p.points.data_ptr<acc_t>();
    const acc_t* lb = p.left_bound.data_ptr<acc_t>();
    const acc_t* rb = p.right_bound.data_ptr<acc_t>();
    const acc_t* ls = p.left_slope.data_ptr<acc_t>();
    const acc_t* rs = p.right_slope.data_ptr<acc_t>();
    ranges.resize(p.num_sets);
    lbs.resize(p.num_sets);
    invs.resize(p.num_sets);
    slopes.assign(p.num_sets * entries, acc_t(0));
    intercepts.assign(p.num_sets * entries, acc_t(0));
    // Wide layers (an fc of 1024 channels) have as many table entries as a small input has
    // elements: build them in parallel too.
    at::parallel_for(0, p.num_sets, 64, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        ranges[s] = make_range<acc_t>(lb[s], rb[s], n);
        lbs[s] = ranges[s].left_bound;
        invs[s] = ranges[s].inv_width;
        for (int j = 0; j < n + 2; ++j) {
          table_pair<acc_t, acc_t>(points + s * (n + 1), ranges[s], ls[s], rs[s], j,
                                   &slopes[s * entries + j], &intercepts[s * entries + j]);
        }
      }
    });
  }
  bool shared() const { return ranges.size() == 1; }
  const acc_t* slopes_of(int64_t s) const { return slopes.data() + s * entries; }
  const acc_t* intercepts_of(int64_t s) const { return intercepts.data() + s * entries; }
};

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

// Calls fn(base) for every row of C interleaved channels (inner == 1), in parallel.
template <typename Fn>
void parallel_rows(const PwluLayout& layout, const Fn& fn) {
  at::parallel_for(0, layout.outer, std::max<int64_t>(1, kGrain / layout.channels),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t row = begin; row < end; ++row) fn(row * layout.channels);
                   });
}

template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const PwluLayout& layout,
                    const CpuTables<acc_t>& tab) {
  if (tab.shared() || layout.inner > 1) {
    parallel_runs(layout, tab.shared(), [&](int64_t base, int64_t len, int64_t s) {
      if (forward_run_fast(x + base, y + base, len, tab.lbs[s], tab.invs[s], tab.n,
                           tab.slopes_of(s), tab.intercepts_of(s))) {
        fix_infinities(x + base, y + base, len, 0, &tab.lbs[s], &tab.invs[s], tab.n,
                       tab.slopes_of(s), tab.intercepts_of(s));
      }
    });
    return;
  }
  const int64_t channels = layout.channels;
  parallel_rows(layout, [&](int64_t base) {
    if (forward_row_fast(x + base, y + base, channels, tab.lbs.data(), tab.invs.data(), tab.n,
                         tab.slopes.data(), tab.intercepts.data())) {
      fix_infinities(x + base, y + base, channels, channels, tab.lbs.data(), tab.invs.data(),
                     tab.n, tab.slopes.data(), tab.intercepts.data());
    }
  });
}

// -------------------------------------------------------------------------------- backward
// grad_x only (frozen parameters): as the forward, with g * S_j.
template <typename scalar_t, typename acc_t>
void input_grad_kernel(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                       const PwluLayout& layout, const CpuTables<acc_t>& tab) {
  if (tab.shared() || layout.inner > 1) {
    parallel_runs(layout, tab.shared(), [&](int64_t base, int64_t len, int64_t s) {
      input_grad_run_fast(g + base, x + base, gx + base, len, tab.lbs[s], tab.invs[s], tab.n,
                          tab.slopes_of(s));
    });
    return;
  }
  parallel_rows(layout, [&](int64_t base) {
    input_grad_row(g + base, x + base, gx + base, layout.channels, tab.lbs.data(),
                   tab.invs.data(), tab.n, tab.slopes.data());
  });
}

// grad_x (gx may be null) and the per-set histograms, histograms[s * W .. s * W + W),
// W = histogram_width(N). The work is cut into blocks that depend on the shape only; each block
// fills its own histograms and blocks are added in block order.
template <typename scalar_t, typename acc_t>
void param_grad_kernel(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                       const PwluLayout& layout, const CpuTables<acc_t>& tab,
                       acc_t* histograms) {
  const int n = tab.n;
  const int width = histogram_width(n);
  const int64_t sets = static_cast<int64_t>(tab.ranges.size());
  const int64_t channels = layout.channels;

  if (!tab.shared() && layout.inner > 1) {
    // One task per channel; within it, plane histograms are added in plane order.
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(width);
      RunScratch<scalar_t, acc_t> scratch(std::min(kPiece, layout.inner), n);
      for (int64_t c = begin; c < end; ++c) {
        acc_t* hist = histograms + c * width;
        for (int64_t o = 0; o < layout.outer; ++o) {
          const int64_t base = (o * channels + c) * layout.inner;
          std::fill(plane.begin(), plane.end(), acc_t(0));
          param_grad_run(g + base, x + base, gx ? gx + base : nullptr, layout.inner,
                         tab.lbs[c], tab.invs[c], n, tab.slopes_of(c), plane.data(), scratch);
          for (int w = 0; w < width; ++w) hist[w] += plane[w];
        }
      }
    });
    return;
  }

  // Layer-wise (one flat run) or interleaved channels (rows of C).
  const int64_t row = tab.shared() ? 1 : channels;
  const int64_t rows = layout.numel() / row;
  const int64_t num_blocks = std::max<int64_t>(
      1, std::min<int64_t>({layout.numel() / 65536, 64, rows}));
  const int64_t rows_per_block = (rows + num_blocks - 1) / num_blocks;
  std::vector<acc_t> block_hist(num_blocks * sets * width, acc_t(0));
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* hist = block_hist.data() + b * sets * width;
      const int64_t first = b * rows_per_block;
      const int64_t last = std::min(rows, first + rows_per_block);
      if (first >= last) continue;
      if (tab.shared()) {
        RunScratch<scalar_t, acc_t> scratch(std::min(kPiece, last - first), n);
        param_grad_run(g + first, x + first, gx ? gx + first : nullptr, last - first,
                       tab.lbs[0], tab.invs[0], n, tab.slopes_of(0), hist, scratch);
        continue;
      }
      // Interleaved channels: prepass a row, scatter into its channels' histograms (adjacent
      // elements are different channels, so there are no chains to break).
      PieceScratch<acc_t> scratch(channels);
      std::vector<scalar_t> gx_scratch(gx ? 0 : channels);
      std::vector<acc_t> unused;
      for (int64_t r = first; r < last; ++r) {
        const int64_t base = r * channels;
        prepass_row(g + base, x + base, gx ? gx + base : gx_scratch.data(), channels,
                    tab.lbs.data(), tab.invs.data(), n, tab.slopes.data(), scratch.slot.data(),
                    scratch.g.data(), scratch.gu.data());
        scatter_piece(scratch, channels, n, 1, sets * width, hist, unused);
      }
    }
  });
  for (int64_t b = 0; b < num_blocks; ++b) {
    const acc_t* hist = block_hist.data() + b * sets * width;
    for (int64_t k = 0; k < sets * width; ++k) histograms[k] += hist[k];
  }
}

at::Tensor pwlu_forward_cpu(const at::Tensor& x, const at::Tensor& points,
                            const at::Tensor& left_bound, const at::Tensor& right_bound,
                            const at::Tensor& left_slope, const at::Tensor& right_slope) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope);
  at::Tensor y = at::empty_like(call.x, call.x.options(), call.format);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    const CpuTables<acc_t> tables(call.params);
                                    forward_kernel<scalar_t, acc_t>(
                                        call.x.const_data_ptr<scalar_t>(),
                                        y.data_ptr<scalar_t>(), call.layout, tables);
                                  });
  return y;
}

PwluGrads pwlu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                            const at::Tensor& points, const at::Tensor& left_bound,
                            const at::Tensor& right_bound, const at::Tensor& left_slope,
                            const at::Tensor& right_slope, bool input_grad, bool param_grads) {
  const PwluBackwardCall call = prepare_backward(grad_output, x, points, left_bound, right_bound,
                                                 left_slope, right_slope, input_grad,
                                                 param_grads);
  const int n = static_cast<int>(points.size(1) - 1);
  const int64_t sets = points.size(0);
  if (x.numel() > 0 && (input_grad || param_grads)) {
    const PwluLayout& layout = call.layout;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const CpuTables<acc_t> tables(call.params);
          const scalar_t* gp = call.grad_output.const_data_ptr<scalar_t>();
          const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
          scalar_t* gxp = input_grad ? call.grad_x.data_ptr<scalar_t>() : nullptr;
          if (!param_grads) {
            input_grad_kernel<scalar_t, acc_t>(gp, xp, gxp, layout, tables);
            return;
          }
          const int width = histogram_width(n);
          // Channel-wise: one histogram per channel; layer-wise: one for the whole tensor.
          std::vector<acc_t> histograms(sets * width, acc_t(0));
          param_grad_kernel<scalar_t, acc_t>(gp, xp, gxp, layout, tables, histograms.data());
          acc_t* out = call.set_grads.data_ptr<acc_t>();
          for (int64_t s = 0; s < sets; ++s) {
            histogram_to_param_grads(histograms.data() + s * width, tables.slopes_of(s),
                                     tables.ranges[s], out + s * param_grad_width(n));
          }
        });
  }
  return pack_grads(call.grad_x, call.set_grads, points);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CPU, m) {
  m.impl("pwlu", &pwlu_forward_cpu);
  m.impl("pwlu_backward", &pwlu_backward_cpu);
}

}  // namespace ops
}  // namespace pwlu_mmdet
