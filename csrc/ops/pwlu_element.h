// The arithmetic of one PWLU element, shared by the CPU and CUDA kernels so that the CPU tests
// check the very code the GPU runs. Notation follows shared/paper/EQUATIONS.md.
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
// 2 * (N + 2) histogram (two adds per element) and convert it once per parameter set
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
  acc_t right_bound;
  acc_t inv_width;  // N / (B_R - B_L): maps x to the interval coordinate t
  acc_t step;       // d = (B_R - B_L) / N, the width of one interval
  int num_intervals;
};

// The op computes the function as given; keeping B_R > B_L is the layer's job (PWLU module).
template <typename acc_t>
C10_HOST_DEVICE inline PwluRange<acc_t> make_range(acc_t left_bound, acc_t right_bound,
                                                   int num_intervals) {
  PwluRange<acc_t> r;
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
    const int idx = j - 1;
    const acc_t y0 = acc_t(points[idx]);
    const acc_t y1 = acc_t(points[idx + 1]);
    const acc_t k = (y1 - y0) * r.inv_width;
    // B_idx = B_L + idx * d, d = (B_R - B_L) / N, as in the reference.
    const acc_t b = r.left_bound + acc_t(idx) * r.step;
    *slope = k;
    *intercept = y0 - b * k;
  }
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

// Width of the per-set gradient histogram: [A_0 .. A_{N+1}, B_0 .. B_{N+1}].
C10_HOST_DEVICE inline int histogram_width(int num_intervals) { return 2 * (num_intervals + 2); }

// Number of parameter gradients of a set, laid out as [Y_0 .. Y_N, B_L, B_R, K_L, K_R].
C10_HOST_DEVICE inline int param_grad_width(int num_intervals) { return num_intervals + 5; }

// One element: its input gradient g * S_j, and its two histogram adds.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void accumulate_element(acc_t* histogram, acc_t g, acc_t t,
                                                          int j, int num_intervals) {
  const acc_t u = t - entry_base<acc_t>(j, num_intervals);
  histogram[j] += g;
  histogram[num_intervals + 2 + j] += g * u;
}

// Converts a set's histogram into its parameter gradients (Table 1 of EQUATIONS.md):
//   left piece  (j = 0):     dY_0 += A, dK_L = B / inv_width (= sum g (x - B_L)), dB_L -= K_L A
//   right piece (j = N + 1): dY_N += A, dK_R = B / inv_width (= sum g (x - B_R)), dB_R -= K_R A
//   inner interval idx:      dY_idx += A - B, dY_{idx+1} += B, and with
//                            sum g (x - B_L) / (B_R - B_L) = (idx A + B) / N:
//                            dB_L -= K (A - (idx A + B) / N), dB_R -= K (idx A + B) / N.
// slopes: the set's S_0..S_{N+1} (K_L, K_idx, K_R).
template <typename acc_t>
C10_HOST_DEVICE inline void histogram_to_param_grads(const acc_t* histogram, const acc_t* slopes,
                                                     const PwluRange<acc_t>& r, acc_t* grads) {
  const int n = r.num_intervals;
  const acc_t* a = histogram;
  const acc_t* b = histogram + n + 2;
  for (int i = 0; i < param_grad_width(n); ++i) grads[i] = acc_t(0);
  acc_t d_left_bound = -slopes[0] * a[0];
  acc_t d_right_bound = -slopes[n + 1] * a[n + 1];
  grads[0] += a[0];
  grads[n] += a[n + 1];
  for (int idx = 0; idx < n; ++idx) {
    const acc_t aj = a[idx + 1];
    const acc_t bj = b[idx + 1];
    const acc_t rel = (acc_t(idx) * aj + bj) / acc_t(n);  // sum g (x - B_L) / (B_R - B_L)
    const acc_t k = slopes[idx + 1];
    grads[idx] += aj - bj;
    grads[idx + 1] += bj;
    d_left_bound -= k * (aj - rel);
    d_right_bound -= k * rel;
  }
  grads[n + 1] = d_left_bound;
  grads[n + 2] = d_right_bound;
  grads[n + 3] = b[0] / r.inv_width;
  grads[n + 4] = b[n + 1] / r.inv_width;
}

}  // namespace ops
}  // namespace pwlu_mmdet
