// Element loops of the CPU kernels: planes (consecutive elements of one parameter set; table
// form, pwlu_tables.h) and rows of interleaved channels (point form, RowView), for the forward,
// the input gradient and the backward's prepass (grad_x plus each element's histogram slot and
// addends, pwlu_histograms.h).
//
// Each loop has two implementations: avx512::* (avx512.h), for float and bfloat16 on CPUs with
// AVX-512F, and generic::*, defined in pwlu_loops.cpp and compiled per ISA. The templates below,
// named after the loop, are what the kernels call: they give a plane or row to the AVX-512 path
// first where that applies, then leave what it did not do to the generic loop.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../pwlu_element.h"
#include "avx512.h"
#include "cpu_clones.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

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

// The generic loops, for every dtype the kernels dispatch on (pwlu_loops.cpp). forward_plane
// returns whether some output needs forward_value's infinity handling (see
// forward_value_finite); the caller then redoes the plane with fix_infinities.
// forward_plane_exact computes forward_value in one pass, for the in-place op. The prepass writes
// grad_x and, per element, its histogram slot (2 j for a plane; c * W + 2 j for channel c of a
// row, counted from `first`, W = histogram_width(N)) and its two addends (histogram_addends) into
// pairs.
#define PWLU_DECLARE_LOOPS(scalar_t, acc_t)                                                       \
  bool forward_plane(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,    \
                     const acc_t* slopes, const acc_t* intercepts);                               \
  void forward_plane_exact(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv,     \
                           int n, const acc_t* slopes, const acc_t* intercepts);                  \
  void forward_row(const scalar_t* x, scalar_t* y, int64_t channels, const RowView<acc_t>& p);   \
  void input_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len,         \
                        acc_t lb, acc_t inv, int n, const acc_t* slopes);                         \
  void input_grad_row(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,      \
                      const RowView<acc_t>& p);                                                   \
  void prepass_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,  \
                     acc_t inv, int n, const acc_t* slopes, int32_t* slot, acc_t* pairs);         \
  void prepass_row(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,         \
                   int64_t first, const RowView<acc_t>& p, int32_t* slot, acc_t* pairs);

namespace generic {
PWLU_FOR_EACH_DTYPE(PWLU_DECLARE_LOOPS)
}  // namespace generic
#undef PWLU_DECLARE_LOOPS

// Rare path: NaN outputs of forward_value_finite are recomputed exactly.
template <typename scalar_t, typename acc_t>
void fix_infinities(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,
                    const acc_t* slopes, const acc_t* intercepts) {
  for (int64_t k = 0; k < len; ++k) {
    y[k] = from_acc<scalar_t, acc_t>(
        forward_value(static_cast<acc_t>(x[k]), lb, inv, n, slopes, intercepts));
  }
}

// The loops the kernels call: each hands its plane or row to the AVX-512 path where that
// applies, which does all or a leading part of it (a multiple of 16 elements, or all of a float
// plane), and gives the rest to the generic loop.

// Returns whether the caller must redo the plane with fix_infinities (never when `exact`, the
// in-place case, whose generic tail takes forward_plane_exact).
template <typename scalar_t, typename acc_t>
bool forward_plane(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb, acc_t inv, int n,
                   const acc_t* s, const acc_t* o, bool exact) {
  const int64_t done = PWLU_AVX512_OR_ZERO(scalar_t, avx512::fits(n),
                                           avx512::forward_plane(x, y, len, lb, inv, n, s, o));
  x += done;
  y += done;
  len -= done;
  if (exact) {
    generic::forward_plane_exact(x, y, len, lb, inv, n, s, o);
    return false;
  }
  return generic::forward_plane(x, y, len, lb, inv, n, s, o);
}

template <typename scalar_t, typename acc_t>
void forward_row(const scalar_t* x, scalar_t* y, int64_t channels, const RowView<acc_t>& p) {
  const int64_t done = PWLU_AVX512_OR_ZERO(scalar_t, avx512::row_fits(channels, p.n),
                                           avx512::forward_row(x, y, channels, p));
  if (done < channels) generic::forward_row(x + done, y + done, channels - done, p.from(done));
}

template <typename scalar_t, typename acc_t>
void input_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                      acc_t inv, int n, const acc_t* s) {
  const int64_t done = PWLU_AVX512_OR_ZERO(
      scalar_t, avx512::fits(n), avx512::input_grad_plane(g, x, gx, len, lb, inv, n, s));
  generic::input_grad_plane(g + done, x + done, gx + done, len - done, lb, inv, n, s);
}

template <typename scalar_t, typename acc_t>
void input_grad_row(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,
                    const RowView<acc_t>& p) {
  const int64_t done = PWLU_AVX512_OR_ZERO(scalar_t, avx512::row_fits(channels, p.n),
                                           avx512::input_grad_row(g, x, gx, channels, p));
  if (done < channels) {
    generic::input_grad_row(g + done, x + done, gx + done, channels - done, p.from(done));
  }
}

template <typename scalar_t, typename acc_t>
void prepass_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t len, acc_t lb,
                   acc_t inv, int n, const acc_t* s, int32_t* slot, acc_t* pairs) {
  const int64_t done =
      PWLU_AVX512_OR_ZERO(scalar_t, avx512::fits(n),
                          avx512::prepass_plane(g, x, gx, len, lb, inv, n, s, slot, pairs));
  if (done < len) {
    generic::prepass_plane(g + done, x + done, gx + done, len - done, lb, inv, n, s, slot + done,
                           pairs + 2 * done);
  }
}

// The AVX-512 row prepass also needs every slot (c * W + 2 j) to fit an int32 lane.
template <typename scalar_t, typename acc_t>
void prepass_row(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t channels,
                 const RowView<acc_t>& p, int32_t* slot, acc_t* pairs) {
  const int64_t done = PWLU_AVX512_OR_ZERO(
      scalar_t,
      avx512::row_fits(channels, p.n) && channels * histogram_width(p.n) < (int64_t(1) << 31),
      avx512::prepass_row(g, x, gx, channels, p, slot, pairs));
  if (done < channels) {
    generic::prepass_row(g + done, x + done, gx + done, channels - done, done, p.from(done),
                         slot + done, pairs + 2 * done);
  }
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
