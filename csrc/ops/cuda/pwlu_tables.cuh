// What the PWLU CUDA kernels share: the per-set tables in device memory, the kernel that builds
// them, and the vectors of the 16-byte accesses. Private to pwlu_kernel.cu.
#pragma once

#include <cstdint>

#include "../pwlu_element.h"

namespace pwlu_mmdet {
namespace ops {

// Internal linkage, as for everything else of pwlu_kernel.cu, the one file that includes this.
namespace {

constexpr int kWarpSize = 32;
// Channels-last and 2-D inputs: a warp covers this many consecutive channels (one per lane).
constexpr int kTileChannels = kWarpSize;

// What one element needs of its set: B_L and N / (B_R - B_L), read with one aligned load.
template <typename acc_t>
struct alignas(2 * sizeof(acc_t)) SetGeometry {
  acc_t left_bound;
  acc_t inv_width;
};

// Table entry j of a set: (S_j, O_j), read with one aligned load.
template <typename acc_t>
struct alignas(2 * sizeof(acc_t)) Piece {
  acc_t slope;
  acc_t intercept;
};

// Device view of the tables: set s has geometry[s], ranges[s] (for the parameter gradients) and
// pieces [s * (N + 2), (s + 1) * (N + 2)).
template <typename acc_t>
struct DeviceTables {
  const SetGeometry<acc_t>* geometry;
  const PwluRange<acc_t>* ranges;
  const Piece<acc_t>* pieces;
  int num_intervals;
};

template <typename acc_t>
__global__ void build_tables_kernel(const acc_t* __restrict__ points,
                                    const acc_t* __restrict__ left_bound,
                                    const acc_t* __restrict__ right_bound,
                                    const acc_t* __restrict__ left_slope,
                                    const acc_t* __restrict__ right_slope, int64_t num_sets,
                                    int num_intervals, acc_t range_eps,
                                    SetGeometry<acc_t>* geometry, PwluRange<acc_t>* ranges,
                                    Piece<acc_t>* pieces) {
  const int entries = num_intervals + 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= num_sets * entries) return;
  const int64_t s = i / entries;
  const int j = static_cast<int>(i % entries);
  const PwluRange<acc_t> r =
      make_range<acc_t>(left_bound[s], right_bound[s], num_intervals, range_eps);
  if (j == 0) {
    ranges[s] = r;
    geometry[s] = {r.left_bound, r.inv_width};
  }
  acc_t slope, intercept;
  table_pair<acc_t, acc_t>(points + s * (num_intervals + 1), r, left_slope[s], right_slope[s],
                           j, &slope, &intercept);
  pieces[i] = {slope, intercept};
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

}  // namespace

}  // namespace ops
}  // namespace pwlu_mmdet
