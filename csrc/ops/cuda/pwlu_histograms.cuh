// Parameter-gradient kernels of pwlu_backward: the histograms of pwlu_element.h, built in two
// deterministic stages. Stage 1: every block sums a fixed slice of one channel (each thread into
// a private shared-memory histogram, then the threads in a fixed order) into a partial histogram;
// planes are read with vector loads, channels-last and 2-D inputs in tiles of rows x 32
// consecutive channels, so that a warp's loads are coalesced. Stage 2: one block per set adds
// its partials in a fixed order and converts them into parameter gradients. No float atomics:
// two backward passes give bit-identical gradients. Private to pwlu_kernel.cu.
#pragma once

#include <cstdint>

#include "../pwlu_element.h"
#include "fast_divmod.h"
#include "pwlu_tables.cuh"

namespace pwlu_mmdet {
namespace ops {

// Internal linkage, as for everything else of pwlu_kernel.cu, the one file that includes this.
namespace {

// Shared-memory histograms: one per thread, `stride` words apart. The width 2 (N + 2) is even;
// an odd stride puts the same entry of a warp's 32 histograms in 32 different banks.
int histogram_stride(int num_intervals) { return histogram_width(num_intervals) | 1; }

// The zeroed private histogram of thread `tid` in the block's dynamic shared memory.
template <typename acc_t>
__device__ __forceinline__ acc_t* private_histogram(int tid, int width, int stride) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* mine = reinterpret_cast<acc_t*>(smem_raw) + tid * stride;
  for (int w = 0; w < width; ++w) mine[w] = acc_t(0);
  return mine;
}

// Histogram of one element of a set with geometry geo and slope S_j at slopes[j * kStride]
// (and its grad_x, when wanted).
template <int kStride, typename scalar_t, typename acc_t>
__device__ __forceinline__ void backward_element(acc_t g, acc_t x, const SetGeometry<acc_t>& geo,
                                                 const acc_t* slopes, int n, acc_t* histogram,
                                                 scalar_t* grad_x) {
  const acc_t t = interval_coordinate(x, geo.left_bound, geo.inv_width);
  const int j = table_entry(t, n);
  if (grad_x) *grad_x = static_cast<scalar_t>(g * slopes[j * kStride]);
  accumulate_element(histogram, g, t, j, n);
}

// The slopes of a global table: S_j is pieces[j].slope.
template <typename acc_t>
__device__ __forceinline__ const acc_t* table_slopes(const Piece<acc_t>* pieces) {
  return &pieces->slope;
}
constexpr int kPieceStride = 2;

// Adds `count` histograms of `width` words, `stride` apart, in index order into out[0, width),
// in two fixed-order stages (groups of 32 histograms in parallel, then the groups), so that
// the block's result does not depend on timing.
template <typename acc_t>
__device__ void sum_histograms(acc_t* smem, int count, int width, int stride, acc_t* out) {
  const int groups = (count + 31) / 32;
  __syncthreads();
  // Stage 1: group k's sum of column w overwrites histogram 32 k's column w.
  for (int task = threadIdx.x; task < groups * width; task += blockDim.x) {
    const int k = task / width;
    const int w = task - k * width;
    const int end = min(count, 32 * k + 32);
    acc_t sum = smem[32 * k * stride + w];
    for (int h = 32 * k + 1; h < end; ++h) sum += smem[h * stride + w];
    smem[32 * k * stride + w] = sum;
  }
  __syncthreads();
  for (int w = threadIdx.x; w < width; w += blockDim.x) {
    acc_t sum = smem[w];
    for (int k = 1; k < groups; ++k) sum += smem[32 * k * stride + w];
    out[w] = sum;
  }
}

// Stage 1, planar layouts (inner > 1): block c * blocks + b sums elements [b * chunk,
// (b + 1) * chunk) of channel c, where element e of the channel lies at
// (e / inner * C + c) * inner + e % inner, into partial[blockIdx.x * W], W = histogram_width(N).
// With kVec > 1 (inner and chunk multiples of kVec, aligned buffers) a thread reads kVec
// consecutive elements of one plane at a time.
template <typename scalar_t, typename acc_t, int kVec, typename index_t>
__global__ void histogram_planes_kernel(const scalar_t* __restrict__ grad_out,
                                        const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ grad_x, index_t per_channel,
                                        int64_t blocks, index_t chunk,
                                        LayoutDivisors<index_t> layout,
                                        DeviceTables<acc_t> tab, int stride,
                                        acc_t* __restrict__ partial) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const index_t c = static_cast<index_t>(blockIdx.x / blocks);
  const index_t b = static_cast<index_t>(blockIdx.x % blocks);
  const int64_t s = c;  // a layer-wise call is walked as one channel (kernel_layout)
  acc_t* mine = private_histogram<acc_t>(threadIdx.x, width, stride);

  const SetGeometry<acc_t> geo = tab.geometry[s];
  const acc_t* slopes = table_slopes(tab.pieces + s * (n + 2));
  const index_t begin = b * chunk;
  const index_t end = begin + chunk < per_channel ? begin + chunk : per_channel;
  const index_t inner = layout.inner.divisor;
  const index_t channels = layout.channels.divisor;
  for (index_t e = begin + threadIdx.x * kVec; e < end; e += blockDim.x * kVec) {
    const index_t plane = layout.inner.div(e);
    const index_t i = (plane * channels + c) * inner + (e - plane * inner);
    if (kVec > 1) {
      const Vec<scalar_t, kVec> gv = *reinterpret_cast<const Vec<scalar_t, kVec>*>(grad_out + i);
      const Vec<scalar_t, kVec> xv = *reinterpret_cast<const Vec<scalar_t, kVec>*>(x + i);
      Vec<scalar_t, kVec> out;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        backward_element<kPieceStride>(static_cast<acc_t>(gv.val[v]),
                                       static_cast<acc_t>(xv.val[v]), geo, slopes, n, mine,
                                       &out.val[v]);
      }
      if (grad_x) *reinterpret_cast<Vec<scalar_t, kVec>*>(grad_x + i) = out;
    } else {
      backward_element<kPieceStride>(static_cast<acc_t>(grad_out[i]), static_cast<acc_t>(x[i]),
                                     geo, slopes, n, mine, grad_x ? grad_x + i : nullptr);
    }
  }
  sum_histograms(smem, blockDim.x, width, stride,
                 partial + static_cast<int64_t>(blockIdx.x) * width);
}

// Stage 1, channels-last and 2-D inputs (inner == 1, element (r, c) at r * C + c): block
// (g, b) with blockDim (32, R) sums rows [b * chunk, (b + 1) * chunk) of channels
// [32 g, 32 g + 32); thread (tx, ty) takes channel 32 g + tx and every R-th row, so that a
// warp reads 32 consecutive channels of one row. partial[(c * blocks + b) * W] as the planar
// kernel. With kStagedSlopes the group's slopes are first copied into shared memory after the
// histograms, entry-major (S_j of channel 32 g + tx at j * 32 + tx), so that a warp's look-ups
// fall in distinct banks rather than on 32 cache lines.
template <typename scalar_t, typename acc_t, typename index_t, bool kStagedSlopes>
__global__ void histogram_rows_kernel(const scalar_t* __restrict__ grad_out,
                                      const scalar_t* __restrict__ x,
                                      scalar_t* __restrict__ grad_x, index_t rows,
                                      index_t channels, int64_t blocks, index_t chunk,
                                      DeviceTables<acc_t> tab, int stride,
                                      acc_t* __restrict__ partial) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int64_t group = blockIdx.x / blocks;
  const index_t b = static_cast<index_t>(blockIdx.x % blocks);
  const int tid = threadIdx.y * kTileChannels + threadIdx.x;
  const index_t c = static_cast<index_t>(group * kTileChannels + threadIdx.x);
  acc_t* mine = private_histogram<acc_t>(tid, width, stride);
  if (kStagedSlopes) {
    acc_t* staged = smem + blockDim.x * blockDim.y * stride;
    const int64_t first = group * kTileChannels;
    const int group_channels =
        static_cast<int>(min(static_cast<int64_t>(kTileChannels), channels - first));
    const Piece<acc_t>* group_pieces = tab.pieces + first * (n + 2);
    for (int e = tid; e < group_channels * (n + 2); e += blockDim.x * blockDim.y) {
      const int local = e / (n + 2);
      const int j = e - local * (n + 2);
      staged[j * kTileChannels + local] = group_pieces[e].slope;
    }
    __syncthreads();
  }

  if (c < channels) {
    const SetGeometry<acc_t> geo = tab.geometry[c];
    const acc_t* slopes =
        kStagedSlopes ? smem + blockDim.x * blockDim.y * stride + threadIdx.x
                      : table_slopes(tab.pieces + static_cast<int64_t>(c) * (n + 2));
    const index_t begin = b * chunk;
    const index_t end = begin + chunk < rows ? begin + chunk : rows;
#pragma unroll 4
    for (index_t r = begin + threadIdx.y; r < end; r += blockDim.y) {
      const index_t i = r * channels + c;
      const acc_t g = static_cast<acc_t>(grad_out[i]);
      const acc_t xi = static_cast<acc_t>(x[i]);
      scalar_t* gx = grad_x ? grad_x + i : nullptr;
      if (kStagedSlopes) {
        backward_element<kTileChannels>(g, xi, geo, slopes, n, mine, gx);
      } else {
        backward_element<kPieceStride>(g, xi, geo, slopes, n, mine, gx);
      }
    }
  }
  __syncthreads();
  // Channel tx's histograms are those of threads (tx, 0..R-1): add them in row-lane order.
  const int lanes = blockDim.y;
  for (int task = tid; task < kTileChannels * width; task += blockDim.x * blockDim.y) {
    const int tx = task / width;
    const int w = task - tx * width;
    const index_t channel = static_cast<index_t>(group * kTileChannels + tx);
    if (channel >= channels) continue;
    acc_t sum = smem[tx * stride + w];
    for (int ty = 1; ty < lanes; ++ty) sum += smem[(ty * kTileChannels + tx) * stride + w];
    partial[(static_cast<int64_t>(channel) * blocks + b) * width + w] = sum;
  }
}

// Stage 2, one block per parameter set: adds the set's `count` partial histograms (in index
// order within each of a fixed number of interleaved lanes, then the lanes in order) and
// converts the sum into the set's parameter gradients.
template <typename acc_t>
__global__ void param_grad_final_kernel(const acc_t* __restrict__ partial, int64_t count,
                                        DeviceTables<acc_t> tab, ParamGradOut<acc_t> grads) {
  extern __shared__ unsigned char smem_raw[];
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int lanes = max(1, static_cast<int>(blockDim.x) / width);
  acc_t* lane_sums = reinterpret_cast<acc_t*>(smem_raw);  // lanes x width
  acc_t* histogram = lane_sums + lanes * width;           // width
  acc_t* slopes = histogram + width;                      // N + 2
  const int64_t s = blockIdx.x;
  const acc_t* mine = partial + s * count * width;
  for (int task = threadIdx.x; task < lanes * width; task += blockDim.x) {
    const int lane = task / width;
    const int w = task - lane * width;
    acc_t sum = acc_t(0);
    for (int64_t p = lane; p < count; p += lanes) sum += mine[p * width + w];
    lane_sums[task] = sum;
  }
  for (int j = threadIdx.x; j < n + 2; j += blockDim.x) {
    slopes[j] = tab.pieces[s * (n + 2) + j].slope;
  }
  __syncthreads();
  for (int w = threadIdx.x; w < width; w += blockDim.x) {
    acc_t sum = lane_sums[w];
    for (int lane = 1; lane < lanes; ++lane) sum += lane_sums[lane * width + w];
    histogram[w] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) histogram_to_param_grads(histogram, slopes, tab.ranges[s], grads, s);
}

}  // namespace

}  // namespace ops
}  // namespace pwlu_mmdet
