// Mean and sum of squared deviations of a chunk of values, and their exact combination (Chan et
// al.), shared by the statistics kernels. Combining per-chunk (count, mean, M2) triples instead
// of summing x and x^2 keeps the variance accurate when |mean| >> std.
#pragma once

#include <c10/macros/Macros.h>

namespace pwlu_mmdet {
namespace ops {

struct Moments {
  double count = 0;
  double mean = 0;
  double m2 = 0;  // sum of squared deviations from the mean
};

C10_HOST_DEVICE inline Moments combine_moments(const Moments& a, const Moments& b) {
  if (b.count == 0) return a;
  if (a.count == 0) return b;
  Moments out;
  out.count = a.count + b.count;
  const double delta = b.mean - a.mean;
  out.mean = a.mean + delta * (b.count / out.count);
  out.m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / out.count);
  return out;
}

}  // namespace ops
}  // namespace pwlu_mmdet
