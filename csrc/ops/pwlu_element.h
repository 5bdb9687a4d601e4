// The arithmetic of one PWLU element, shared by the CPU and CUDA kernels so that the CPU tests
// check the very code the GPU runs. Notation follows docs/method.md.
//
// Forward (Sec. 4.3). A parameter set (one channel, or the whole layer in layer-wise mode) with
// N intervals becomes a table of N + 2 (slope S_j, intercept O_j) pairs: entry 0 is the left
// outer piece, entries 1..N the inner intervals, entry N + 1 the right outer piece. An element
// costs one index computation, one table look-up and one multiply-add, written without branches
// so that compilers vectorise it (gathers on AVX2).
//
// Backward (Table 1). With t = (x - B_L) * N / (B_R - B_L) and u = t - base_j the position of x
// inside its piece (base_j = 0, idx, N for the left piece, inner interval idx, right piece), every
// parameter gradient is a linear function of two sums per table entry over the elements that
// fall into it: A_j = sum(g) and B_j = sum(g * u). The kernels therefore only build this
// 2 * (N + 2) histogram, stored as pairs [A_0, B_0, A_1, B_1, ...] so that an element's two
// adds touch one 8-byte pair (two adds per element), and convert it once per parameter set
// (histogram_to_param_grads).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace pwlu_mmdet {
namespace ops {

// Geometry of one parameter set, in the compute type acc_t (float, or double for double).
template <typename acc_t>
struct PwluRange {
  acc_t left_bound;
  acc_t right_bound;  // as computed with: B_R, or its guarded value (make_range)
  acc_t inv_width;    // N / (B_R - B_L): maps x to the interval coordinate t
  acc_t step;         // d = (B_R - B_L) / N, the width of one interval
  int num_intervals;
  bool right_clamped;  // B_R was replaced by B_L + min width: its gradient goes to B_L
};

// The range of a set. With range_eps > 0 the op applies the PWLU layer's guard against a
// collapsed or flipped range: where B_R - B_L < range_eps * max(1, |B_L|, |B_R|) (or B_R is
// NaN), B_R becomes B_L + range_eps * max(1, |B_L|, |B_R|), so the op never divides by zero or
// flips its range. The scale is a constant for the gradients, so a clamped B_R passes its
// gradient on to B_L (histogram_to_param_grads). With range_eps = 0, B_R is used as given.
template <typename acc_t>
C10_HOST_DEVICE inline PwluRange<acc_t> make_range(acc_t left_bound, acc_t right_bound,
                                                   int num_intervals, acc_t range_eps) {
  PwluRange<acc_t> r;
  r.right_clamped = false;
  if (range_eps > acc_t(0)) {
    // max(1, |B_L|, |B_R|), NaN if either bound is (as torch.maximum).
    const acc_t al = left_bound < acc_t(0) ? -left_bound : left_bound;
    const acc_t ar = right_bound < acc_t(0) ? -right_bound : right_bound;
    acc_t scale = acc_t(1);
    scale = (al > scale || al != al) ? al : scale;
    scale = (ar > scale || ar != ar) ? ar : scale;
    const acc_t min_width = range_eps * scale;
    if (!(right_bound - left_bound >= min_width)) {
      right_bound = left_bound + min_width;
      r.right_clamped = true;
    }
  }
  r.left_bound = left_bound;
  r.right_bound = right_bound;
  r.inv_width = acc_t(num_intervals) / (right_bound - left_bound);
  r.step = (right_bound - left_bound) / acc_t(num_intervals);
  r.num_intervals = num_intervals;
  return r;
}

// Interval coordinate t = (x - B_L) * N / (B_R - B_L); inside the range idx = floor(t).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t interval_coordinate(acc_t x, acc_t left_bound,
                                                            acc_t inv_width) {
  return (x - left_bound) * inv_width;
}

// t clamped to [-1, N]: negative and NaN t give -1, t >= N gives N. Its truncation plus one is
// the table entry j in [0, N + 1], and that entry's base (the t of its left end; 0 for the left
// piece) is clamp(j - 1, 0, N). No float-to-int conversion sees a value outside [-1, N].
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t clamped_coordinate(acc_t t, int num_intervals) {
  const acc_t n = acc_t(num_intervals);
  t = t >= acc_t(0) ? t : acc_t(-1);
  return t < n ? t : n;
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE int table_entry(acc_t t, int num_intervals) {
  // For t in [0, N) the truncation is floor(t) <= N - 1.
  return static_cast<int>(clamped_coordinate(t, num_intervals)) + 1;
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t entry_base(int j, int num_intervals) {
  // Two flat selects rather than a nested one: GCC vectorises this form.
  int base = j - 1;
  base = base < 0 ? 0 : base;
  base = base > num_intervals ? num_intervals : base;
  return acc_t(base);
}

// Inner interval idx of the (slope, intercept) table (Sec. 4.3): S = (Y_{idx+1} - Y_idx) / d and
// O = Y_idx - B_idx * S, with B_idx = B_L + idx * d as in the reference.
template <typename acc_t, typename param_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void inner_pair(const param_t* points,
                                                  const PwluRange<acc_t>& r, int idx,
                                                  acc_t* slope, acc_t* intercept) {
  const acc_t y0 = acc_t(points[idx]);
  const acc_t k = (acc_t(points[idx + 1]) - y0) * r.inv_width;
  *slope = k;
  *intercept = y0 - (r.left_bound + acc_t(idx) * r.step) * k;
}

// Builds entry j of the (slope, intercept) table from the raw parameters (Sec. 4.3).
// points: Y_0..Y_N of this set.
template <typename acc_t, typename param_t>
C10_HOST_DEVICE inline void table_pair(const param_t* points, const PwluRange<acc_t>& r,
                                       acc_t left_slope, acc_t right_slope, int j, acc_t* slope,
                                       acc_t* intercept) {
  const int n = r.num_intervals;
  if (j == 0) {
    *slope = left_slope;
    *intercept = acc_t(points[0]) - r.left_bound * left_slope;
  } else if (j == n + 1) {
    *slope = right_slope;
    *intercept = acc_t(points[n]) - r.right_bound * right_slope;
  } else {
    inner_pair(points, r, j - 1, slope, intercept);
  }
}

// The whole table of a set, entries 0..N+1, as table_pair; the inner loop has no branch, so that
// host compilers vectorise it.
template <typename acc_t, typename param_t>
C10_HOST_DEVICE inline void build_table(const param_t* points, const PwluRange<acc_t>& r,
                                        acc_t left_slope, acc_t right_slope, acc_t* slopes,
                                        acc_t* intercepts) {
  const int n = r.num_intervals;
  table_pair(points, r, left_slope, right_slope, 0, slopes, intercepts);
  for (int idx = 0; idx < n; ++idx) {
    inner_pair(points, r, idx, slopes + idx + 1, intercepts + idx + 1);
  }
  table_pair(points, r, left_slope, right_slope, n + 1, slopes + n + 1, intercepts + n + 1);
}

// Slopes only (S_0..S_{N+1}), as build_table.
template <typename acc_t, typename param_t>
C10_HOST_DEVICE inline void build_slopes(const param_t* points, const PwluRange<acc_t>& r,
                                         acc_t left_slope, acc_t right_slope, acc_t* slopes) {
  const int n = r.num_intervals;
  slopes[0] = left_slope;
  for (int idx = 0; idx < n; ++idx) {
    slopes[idx + 1] = (acc_t(points[idx + 1]) - acc_t(points[idx])) * r.inv_width;
  }
  slopes[n + 1] = right_slope;
}

// Point form of a piece, for interleaved channels (the CPU's channels-last and 2-D rows), where
// building a table per channel would cost more than the elements: the same pieces and the same
// slopes as the table, anchored at a breakpoint instead of at an intercept,
// y = anchor_y + S_j * (x - anchor_x).
template <typename acc_t>
struct PointPiece {
  acc_t slope;
  acc_t anchor_x;
  acc_t anchor_y;
};

// Piece j of a set with points Y_0..Y_N. left: (B_L, Y_0, K_L); inner idx: (B_idx, Y_idx, S_idx);
// right: (B_R, Y_N, K_R). Only Y_a and Y_{a+1} with a = clamp(j - 1, 0, N - 1) are read.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE PointPiece<acc_t> point_piece(const acc_t* points, int j,
                                                                const PwluRange<acc_t>& r,
                                                                acc_t left_slope,
                                                                acc_t right_slope) {
  const int n = r.num_intervals;
  int a = j - 1;
  a = a < 0 ? 0 : a;
  a = a > n - 1 ? n - 1 : a;
  const acc_t y0 = points[a];
  const acc_t y1 = points[a + 1];
  const bool right = j == n + 1;
  PointPiece<acc_t> p;
  p.slope = j == 0 ? left_slope : (right ? right_slope : (y1 - y0) * r.inv_width);
  p.anchor_x = right ? r.right_bound : r.left_bound + acc_t(a) * r.step;
  p.anchor_y = right ? y1 : y0;
  return p;
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool is_infinite(acc_t x) {
#if defined(__CUDA_ARCH__)
  return isinf(x);
#else
  return std::isinf(x);
#endif
}

// y = x * S_j + O_j. At x = +-inf with a zero slope the limit is the intercept, not NaN.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t apply_piece(acc_t x, acc_t slope, acc_t intercept) {
  const acc_t y = x * slope + intercept;
  return (slope == acc_t(0) && is_infinite(x)) ? intercept : y;
}

// The whole forward of one element of a set with table (slopes, intercepts).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t forward_value(acc_t x, acc_t left_bound, acc_t inv_width,
                                                      int num_intervals, const acc_t* slopes,
                                                      const acc_t* intercepts) {
  const int j = table_entry(interval_coordinate(x, left_bound, inv_width), num_intervals);
  return apply_piece(x, slopes[j], intercepts[j]);
}

// forward_value without the infinity case, for loops that must stay free of selects to
// vectorise: it differs from forward_value only where it returns NaN for a non-NaN x (0 * inf),
// which such loops detect and redo with forward_value.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t forward_value_finite(acc_t x, acc_t left_bound,
                                                             acc_t inv_width, int num_intervals,
                                                             const acc_t* slopes,
                                                             const acc_t* intercepts) {
  const int j = table_entry(interval_coordinate(x, left_bound, inv_width), num_intervals);
  return x * slopes[j] + intercepts[j];
}

// The point-form forward of one element (see point_piece), with apply_piece's infinity limit.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t forward_value_points(acc_t x, const acc_t* points,
                                                             const PwluRange<acc_t>& r,
                                                             acc_t left_slope,
                                                             acc_t right_slope) {
  const int j = table_entry(interval_coordinate(x, r.left_bound, r.inv_width), r.num_intervals);
  const PointPiece<acc_t> p = point_piece(points, j, r, left_slope, right_slope);
  const acc_t y = p.anchor_y + p.slope * (x - p.anchor_x);
  return (p.slope == acc_t(0) && is_infinite(x)) ? p.anchor_y : y;
}

// Width of the per-set gradient histogram: pairs [A_j, B_j] for j = 0 .. N + 1.
C10_HOST_DEVICE inline int histogram_width(int num_intervals) { return 2 * (num_intervals + 2); }

// Where the parameter gradients of every set go: dY_0..dY_N of set s at points + s * (N + 1),
// and one value per set in each of the others.
template <typename acc_t>
struct ParamGradOut {
  acc_t* points;
  acc_t* left_bound;
  acc_t* right_bound;
  acc_t* left_slope;
  acc_t* right_slope;
};

// An element's two histogram addends, A: g and B: g * u, with the rules that keep the parameter
// gradients of the other elements of its set exact when inputs are not finite:
// * a NaN t (a NaN x) lies in no piece and adds nothing (its output is NaN whatever the
//   parameters; table_entry still gives it entry 0, for its input gradient g * K_L);
// * a zero g adds zero to B also where u is infinite (x = +-inf, where 0 * inf would be NaN),
//   as apply_piece takes the limit in the forward. A non-zero g at x = +-inf gives the outer
//   slope an infinite gradient, sum g (x - B), which is what the math says.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void histogram_addends(acc_t g, acc_t t, acc_t u, acc_t* a,
                                                         acc_t* b) {
  const bool no_piece = t != t;
  *a = no_piece ? acc_t(0) : g;
  *b = (no_piece || g == acc_t(0)) ? acc_t(0) : g * u;
}

// One element's two histogram adds (histogram_addends).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void accumulate_element(acc_t* histogram, acc_t g, acc_t t,
                                                          int j, int num_intervals) {
  acc_t a, b;
  histogram_addends(g, t, t - entry_base<acc_t>(j, num_intervals), &a, &b);
  histogram[2 * j] += a;
  histogram[2 * j + 1] += b;
}

// The bound gradients' terms of inner interval idx: with sum g (x - B_L) / (B_R - B_L) =
// (idx A + B) / N, dB_L gets -K (A - (idx A + B) / N) and dB_R gets -K (idx A + B) / N
// (accumulated here with the sign flipped).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void add_bound_terms(const acc_t* histogram,
                                                       const acc_t* slopes, int idx,
                                                       acc_t inv_n, acc_t* left, acc_t* right) {
  const acc_t aj = histogram[2 * (idx + 1)];
  const acc_t rel = (acc_t(idx) * aj + histogram[2 * (idx + 1) + 1]) * inv_n;
  const acc_t k = slopes[idx + 1];
  *left += k * (aj - rel);
  *right += k * rel;
}

// Converts a set's histogram into its parameter gradients (Table 1, docs/method.md):
//   left piece  (j = 0):     dY_0 += A, dK_L = B / inv_width (= sum g (x - B_L)), dB_L -= K_L A
//   right piece (j = N + 1): dY_N += A, dK_R = B / inv_width (= sum g (x - B_R)), dB_R -= K_R A
//   inner interval idx:      dY_idx += A - B, dY_{idx+1} += B, and add_bound_terms.
// slopes: the set's S_0..S_{N+1} (K_L, K_idx, K_R); r: its range (make_range). Written without
// chains through memory and with two partial sums per bound: it runs once per set, and an fc
// layer has 1024 sets.
template <typename acc_t>
C10_HOST_DEVICE inline void histogram_to_param_grads(const acc_t* histogram, const acc_t* slopes,
                                                     const PwluRange<acc_t>& r,
                                                     const ParamGradOut<acc_t>& out, int64_t set) {
  const int n = r.num_intervals;
  // A_j = histogram[2 j], B_j = histogram[2 j + 1].
  auto a = [histogram](int j) { return histogram[2 * j]; };
  auto b = [histogram](int j) { return histogram[2 * j + 1]; };
  acc_t* d_points = out.points + set * (n + 1);
  // dY_i: the end of interval i - 1 (the left piece for i = 0) plus the start of interval i
  // (the right piece for i = N).
  for (int i = 0; i <= n; ++i) {
    const acc_t from_left = i > 0 ? b(i) : a(0);
    const acc_t from_right = i < n ? a(i + 1) - b(i + 1) : a(n + 1);
    d_points[i] = from_left + from_right;
  }
  const acc_t inv_n = acc_t(1) / acc_t(n);  // a multiply per interval, not a division
  acc_t left0 = 0, left1 = 0, right0 = 0, right1 = 0;
  int idx = 0;
  for (; idx + 1 < n; idx += 2) {
    add_bound_terms(histogram, slopes, idx, inv_n, &left0, &right0);
    add_bound_terms(histogram, slopes, idx + 1, inv_n, &left1, &right1);
  }
  if (idx < n) add_bound_terms(histogram, slopes, idx, inv_n, &left0, &right0);
  const acc_t d_left = -slopes[0] * a(0) - (left0 + left1);
  const acc_t d_right = -slopes[n + 1] * a(n + 1) - (right0 + right1);
  // A clamped B_R is B_L + constant (make_range).
  out.left_bound[set] = r.right_clamped ? d_left + d_right : d_left;
  out.right_bound[set] = r.right_clamped ? acc_t(0) : d_right;
  out.left_slope[set] = b(0) / r.inv_width;
  out.right_slope[set] = b(n + 1) / r.inv_width;
}

}  // namespace ops
}  // namespace pwlu_mmdet
