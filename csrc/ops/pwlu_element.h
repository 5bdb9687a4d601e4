// The arithmetic of one PWLU element, shared by the CPU and CUDA kernels so that the CPU tests
// check the very code the GPU runs. Notation follows shared/paper/EQUATIONS.md.
//
// A parameter set (one channel, or the whole layer in layer-wise mode) with N intervals is turned
// into a table of N + 2 (slope, intercept) pairs (Sec. 4.3): entry 0 is the left outer piece,
// entries 1..N the inner intervals, entry N + 1 the right outer piece. The forward pass is then
// one index computation, one table look-up and one multiply-add per element.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace pwlu_mmdet {
namespace ops {

// Geometry of one parameter set, in the compute type acc_t (float, or double for double).
template <typename acc_t>
struct PwluRange {
  acc_t left_bound;
  acc_t right_bound;
  acc_t inv_width;  // N / (B_R - B_L): maps x to the interval coordinate t in [0, N)
  int num_intervals;
};

template <typename acc_t>
C10_HOST_DEVICE inline PwluRange<acc_t> make_range(acc_t left_bound, acc_t right_bound,
                                                   int num_intervals) {
  PwluRange<acc_t> r;
  // The op computes the function as given; keeping B_R > B_L is the layer's job (PWLU module).
  r.left_bound = left_bound;
  r.right_bound = right_bound;
  r.inv_width = acc_t(num_intervals) / (right_bound - left_bound);
  r.num_intervals = num_intervals;
  return r;
}

// Interval coordinate t = (x - B_L) * N / (B_R - B_L). Inside the range idx = floor(t) and the
// fraction t - idx is the weight of Y_{idx+1}.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t interval_coordinate(acc_t x, const PwluRange<acc_t>& r) {
  return (x - r.left_bound) * r.inv_width;
}

// Table entry j in [0, N + 1] for coordinate t. NaN goes to entry 0 (its output stays NaN); no
// float-to-int conversion ever sees a value outside [0, N).
template <typename acc_t>
C10_HOST_DEVICE inline int table_entry(acc_t t, int num_intervals) {
  if (!(t >= acc_t(0))) return 0;
  if (!(t < acc_t(num_intervals))) return num_intervals + 1;
  const int idx = static_cast<int>(t);
  // float rounding can put t just below N yet floor to N; clamp to the last inner interval.
  return (idx < num_intervals ? idx : num_intervals - 1) + 1;
}

// Builds entry j of the (slope, intercept) table from the raw parameters (Sec. 4.3).
// points: Y_0..Y_N of this set, any element type convertible to acc_t.
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
    const int idx = j - 1;
    const acc_t y0 = acc_t(points[idx]);
    const acc_t y1 = acc_t(points[idx + 1]);
    const acc_t k = (y1 - y0) * r.inv_width;
    // B_idx = B_L + idx * d, d = (B_R - B_L) / N, as in the reference.
    const acc_t b = r.left_bound + acc_t(idx) * ((r.right_bound - r.left_bound) / acc_t(n));
    *slope = k;
    *intercept = y0 - b * k;
  }
}

template <typename acc_t>
C10_HOST_DEVICE inline bool is_infinite(acc_t x) {
#if defined(__CUDA_ARCH__)
  return isinf(x);
#else
  return std::isinf(x);
#endif
}

// y = x * S_j + O_j. At x = +-inf with a zero slope the limit is the intercept, not NaN.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t apply_piece(acc_t x, acc_t slope, acc_t intercept) {
  const acc_t y = x * slope + intercept;
  return (slope == acc_t(0) && is_infinite(x)) ? intercept : y;
}

// Gradients of one element w.r.t. the parameters of its set (Table 1 of EQUATIONS.md), scaled by
// the incoming gradient g. The caller accumulates them.
template <typename acc_t>
struct ElementParamGrad {
  int lower_point;      // index of the point receiving w_lower (or -1: none)
  acc_t w_lower;        // d y / d Y_lower * g
  acc_t w_upper;        // d y / d Y_{lower+1} * g (inner intervals only)
  acc_t d_left_bound;   // d y / d B_L * g
  acc_t d_right_bound;  // d y / d B_R * g
  acc_t d_left_slope;   // d y / d K_L * g
  acc_t d_right_slope;  // d y / d K_R * g
};

// j: table entry of the element, t: its interval coordinate, slope: S_j.
template <typename acc_t>
C10_HOST_DEVICE inline ElementParamGrad<acc_t> element_param_grad(acc_t g, acc_t x, acc_t t,
                                                                  int j, acc_t slope,
                                                                  const PwluRange<acc_t>& r) {
  const int n = r.num_intervals;
  ElementParamGrad<acc_t> out;
  out.d_left_bound = acc_t(0);
  out.d_right_bound = acc_t(0);
  out.d_left_slope = acc_t(0);
  out.d_right_slope = acc_t(0);
  out.w_upper = acc_t(0);
  if (j == 0) {
    out.lower_point = 0;
    out.w_lower = g;
    out.d_left_slope = g * (x - r.left_bound);
    out.d_left_bound = -g * slope;
  } else if (j == n + 1) {
    out.lower_point = n;
    out.w_lower = g;
    out.d_right_slope = g * (x - r.right_bound);
    out.d_right_bound = -g * slope;
  } else {
    const int idx = j - 1;
    const acc_t frac = t - acc_t(idx);
    out.lower_point = idx;
    out.w_lower = g * (acc_t(1) - frac);
    out.w_upper = g * frac;
    // (x - B_L) / (B_R - B_L) == t / N.
    const acc_t rel = t / acc_t(n);
    const acc_t gk = g * slope;
    out.d_left_bound = -gk * (acc_t(1) - rel);
    out.d_right_bound = -gk * rel;
  }
  return out;
}

// Number of per-set accumulators of the parameter gradient: N + 1 points and four scalars.
C10_HOST_DEVICE inline int param_grad_width(int num_intervals) { return num_intervals + 5; }

// Adds one element's parameter gradient into a row of param_grad_width(N) accumulators laid out
// as [Y_0 .. Y_N, B_L, B_R, K_L, K_R].
template <typename acc_t>
C10_HOST_DEVICE inline void accumulate_param_grad(acc_t* acc, const ElementParamGrad<acc_t>& e,
                                                  int num_intervals) {
  const int n = num_intervals;
  acc[e.lower_point] += e.w_lower;
  if (e.lower_point < n) acc[e.lower_point + 1] += e.w_upper;
  acc[n + 1] += e.d_left_bound;
  acc[n + 2] += e.d_right_bound;
  acc[n + 3] += e.d_left_slope;
  acc[n + 4] += e.d_right_slope;
}

}  // namespace ops
}  // namespace pwlu_mmdet
