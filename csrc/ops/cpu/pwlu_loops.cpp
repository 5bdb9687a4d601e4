// The generic element loops of pwlu_loops.h (namespace generic). They are branch-free
// (pwlu_element.h) and compiled twice, for AVX2 and for the baseline ISA, with the better one
// picked at load time (cpu_clones.h), so that the table look-ups vectorise as gathers. The
// templates hold the code; the cloned functions at the end instantiate them for every dtype.
#include "pwlu_loops.h"

#include "../pwlu_element.h"
#include "cpu_clones.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

namespace {

// A plane of `len` elements, with forward_value_finite; returns whether an output needs
// forward_value's infinity handling.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE bool forward_plane_impl(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
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

// A plane computed with forward_value in one pass, for the in-place op (pwlu_), where y is x and a
// second pass (fix_infinities) could no longer read x. No __restrict__: x and y may be one array.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void forward_plane_exact_impl(const scalar_t* x, scalar_t* y, int64_t len,
                                                acc_t lb, acc_t inv, int n,
                                                const acc_t* __restrict__ slopes,
                                                const acc_t* __restrict__ intercepts) {
  for (int64_t k = 0; k < len; ++k) {
    y[k] = from_acc<scalar_t, acc_t>(
        forward_value(static_cast<acc_t>(x[k]), lb, inv, n, slopes, intercepts));
  }
}

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

// grad_x = g * S_j for a plane.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void input_grad_plane_impl(const scalar_t* __restrict__ g,
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

// Prepass of a plane: slot = 2 j.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void prepass_plane_impl(const scalar_t* __restrict__ g,
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

}  // namespace

namespace generic {

#define PWLU_DEFINE_CLONED_LOOPS(scalar_t, acc_t)                                                  \
  PWLU_CPU_CLONES bool forward_plane(const scalar_t* x, scalar_t* y, int64_t len, acc_t lb,        \
                                     acc_t inv, int n, const acc_t* s, const acc_t* o) {           \
    return forward_plane_impl<scalar_t, acc_t>(x, y, len, lb, inv, n, s, o);                       \
  }                                                                                                \
  PWLU_CPU_CLONES void forward_plane_exact(const scalar_t* x, scalar_t* y, int64_t len,            \
                                           acc_t lb, acc_t inv, int n, const acc_t* s,             \
                                           const acc_t* o) {                                       \
    forward_plane_exact_impl<scalar_t, acc_t>(x, y, len, lb, inv, n, s, o);                        \
  }                                                                                                \
  PWLU_CPU_CLONES void forward_row(const scalar_t* x, scalar_t* y, int64_t channels,               \
                                   const RowView<acc_t>& p) {                                      \
    forward_row_impl<scalar_t, acc_t>(x, y, channels, p);                                          \
  }                                                                                                \
  PWLU_CPU_CLONES void input_grad_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx,        \
                                        int64_t len, acc_t lb, acc_t inv, int n,                   \
                                        const acc_t* s) {                                          \
    input_grad_plane_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s);                          \
  }                                                                                                \
  PWLU_CPU_CLONES void input_grad_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,          \
                                      int64_t channels, const RowView<acc_t>& p) {                 \
    input_grad_row_impl<scalar_t, acc_t>(g, x, gx, channels, p);                                   \
  }                                                                                                \
  PWLU_CPU_CLONES void prepass_plane(const scalar_t* g, const scalar_t* x, scalar_t* gx,           \
                                     int64_t len, acc_t lb, acc_t inv, int n, const acc_t* s,      \
                                     int32_t* slot, acc_t* pairs) {                                \
    prepass_plane_impl<scalar_t, acc_t>(g, x, gx, len, lb, inv, n, s, slot, pairs);                \
  }                                                                                                \
  PWLU_CPU_CLONES void prepass_row(const scalar_t* g, const scalar_t* x, scalar_t* gx,             \
                                   int64_t channels, int64_t first, const RowView<acc_t>& p,       \
                                   int32_t* slot, acc_t* pairs) {                                  \
    prepass_row_impl<scalar_t, acc_t>(g, x, gx, channels, first, p, slot, pairs);                  \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_LOOPS)
#undef PWLU_DEFINE_CLONED_LOOPS

}  // namespace generic

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
