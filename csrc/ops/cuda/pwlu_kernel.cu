// CUDA kernels of pwlu_mmdet::pwlu, pwlu_ and pwlu_backward.
//
// Mirrors cpu/pwlu_kernel.cpp and uses the same per-element arithmetic (pwlu_element.h).
// 1. A tiny kernel turns the raw parameters into per-set geometry and (slope, intercept) pieces.
// 2. The forward and the input gradient are element-wise: one piece look-up and one
//    multiply-add per element, 16-byte vector accesses where the buffers allow, and the channel
//    found once per vector (a multiply-high division, then a running counter).
// 3. The parameter gradients are histograms (pwlu_element.h) built deterministically in two
//    stages: every block sums a fixed slice of one channel (each thread in a private
//    shared-memory histogram, then the threads in a fixed order), and a second kernel adds the
//    block partials of a set in a fixed order and converts them to parameter gradients. No float
//    atomics: two backward passes give bit-identical gradients. Planar layouts read a channel's
//    planes with vector loads; channels-last and 2-D inputs read tiles of rows x 32 consecutive
//    channels, so that a warp's loads are coalesced.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../pwlu_common.h"
#include "../pwlu_element.h"
#include "fast_divmod.h"

namespace pwlu_mmdet {
namespace ops {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;
// Channels-last and 2-D parameter gradients: a warp covers this many consecutive channels.
constexpr int kTileChannels = 32;
constexpr int64_t kSharedMemoryBytes = 48 * 1024;
// Work of one parameter-gradient block: enough elements to amortise its histogram reduction,
// few enough that a ResNet stage's channels fill the GPU with blocks.
constexpr int64_t kPlaneElementsPerBlock = 4096;
constexpr int64_t kRowsPerBlock = 256;

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

// Owns the device memory of the tables for the duration of one call.
template <typename acc_t>
struct TableStorage {
  at::Tensor storage;
  DeviceTables<acc_t> view;

  TableStorage(const PwluParams& p, cudaStream_t stream) {
    const int n = static_cast<int>(p.num_intervals);
    const int64_t entries = p.num_sets * (n + 2);
    // One allocation: pieces, geometry, then ranges; the first two are arrays of 2 * acc_t
    // pairs, so every region starts at its own alignment.
    const int64_t piece_bytes = entries * sizeof(Piece<acc_t>);
    const int64_t geometry_bytes = p.num_sets * sizeof(SetGeometry<acc_t>);
    const int64_t range_bytes = p.num_sets * sizeof(PwluRange<acc_t>);
    storage = at::empty({piece_bytes + geometry_bytes + range_bytes},
                        p.points.options().dtype(at::kByte));
    auto* base = storage.data_ptr<uint8_t>();
    auto* pieces = reinterpret_cast<Piece<acc_t>*>(base);
    auto* geometry = reinterpret_cast<SetGeometry<acc_t>*>(base + piece_bytes);
    auto* ranges = reinterpret_cast<PwluRange<acc_t>*>(base + piece_bytes + geometry_bytes);
    const int blocks = static_cast<int>((entries + kThreads - 1) / kThreads);
    build_tables_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(
        p.points.data_ptr<acc_t>(), p.left_bound.data_ptr<acc_t>(),
        p.right_bound.data_ptr<acc_t>(), p.left_slope.data_ptr<acc_t>(),
        p.right_slope.data_ptr<acc_t>(), p.num_sets, n, static_cast<acc_t>(p.range_eps),
        geometry, ranges, pieces);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    view = {geometry, ranges, pieces, n};
  }
};

// Walks the sets of consecutive elements of a (outer, C, inner) tensor: one division pair for
// the first element, then a counter, so that a vector of elements costs one division, not one
// per element.
template <typename index_t>
struct SetCursor {
  index_t set;
  index_t position;  // within the current plane of inner elements

  __device__ __forceinline__ SetCursor(index_t i, const LayoutDivisors<index_t>& d) {
    const index_t plane = d.inner.div(i);
    position = i - plane * d.inner.divisor;
    set = d.channels.mod(plane);
  }
  __device__ __forceinline__ void advance(const LayoutDivisors<index_t>& d) {
    if (++position == d.inner.divisor) {
      position = 0;
      set = set + 1 == d.channels.divisor ? 0 : set + 1;
    }
  }
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// The element-wise kernels' value of one element of a set with geometry geo and table
// `pieces` (entry j at pieces[j * kStride]): pwlu(x) (forward), or g * S_j (the input gradient
// alone: phase I, frozen parameters).
template <bool kInputGrad, int kStride = 1, typename acc_t>
__device__ __forceinline__ acc_t element_value(acc_t g, acc_t x, const SetGeometry<acc_t>& geo,
                                               const Piece<acc_t>* pieces, int n) {
  const int j = table_entry(interval_coordinate(x, geo.left_bound, geo.inv_width), n);
  const Piece<acc_t> p = pieces[j * kStride];
  return kInputGrad ? g * p.slope : apply_piece(x, p.slope, p.intercept);
}

template <bool kInputGrad, typename acc_t>
__device__ __forceinline__ acc_t set_element_value(acc_t g, acc_t x,
                                                   const DeviceTables<acc_t>& tab, int64_t s) {
  const int n = tab.num_intervals;
  return element_value<kInputGrad>(g, x, tab.geometry[s], tab.pieces + s * (n + 2), n);
}

// out = pwlu(x), or out = grad_out * S_j with kInputGrad, element-wise. out may be x (pwlu_):
// every element is read, then written, by one thread. Each thread handles kVec consecutive
// elements per step (16-byte accesses) when vectorised. With kUniformSet (inner a multiple of
// kVec, or a single set) the kVec elements of a vector share one set, whose geometry and table
// are then found once per vector.
template <typename scalar_t, typename acc_t, int kVec, typename index_t, bool kInputGrad,
          bool kUniformSet>
__global__ void elementwise_kernel(const scalar_t* grad_out, const scalar_t* x, scalar_t* out,
                                   index_t numel, LayoutDivisors<index_t> layout,
                                   DeviceTables<acc_t> tab) {
  const int n = tab.num_intervals;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x * kVec;
  for (index_t base = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
       base < numel; base += stride) {
    SetCursor<index_t> cursor(base, layout);
    if (kVec > 1 && base + kVec <= numel) {
      using V = Vec<scalar_t, kVec>;
      const V xv = *reinterpret_cast<const V*>(x + base);
      V gv;
      if (kInputGrad) gv = *reinterpret_cast<const V*>(grad_out + base);
      V result;
      if (kUniformSet) {
        const SetGeometry<acc_t> geo = tab.geometry[cursor.set];
        const Piece<acc_t>* pieces = tab.pieces + static_cast<int64_t>(cursor.set) * (n + 2);
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv.val[v]) : acc_t(0);
          result.val[v] = static_cast<scalar_t>(
              element_value<kInputGrad>(g, static_cast<acc_t>(xv.val[v]), geo, pieces, n));
        }
      } else {
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv.val[v]) : acc_t(0);
          result.val[v] = static_cast<scalar_t>(set_element_value<kInputGrad>(
              g, static_cast<acc_t>(xv.val[v]), tab, static_cast<int64_t>(cursor.set)));
          cursor.advance(layout);
        }
      }
      *reinterpret_cast<V*>(out + base) = result;
    } else {
      for (index_t i = base; i < numel && i < base + kVec; ++i) {
        const acc_t g = kInputGrad ? static_cast<acc_t>(grad_out[i]) : acc_t(0);
        out[i] = static_cast<scalar_t>(set_element_value<kInputGrad>(
            g, static_cast<acc_t>(x[i]), tab, static_cast<int64_t>(cursor.set)));
        cursor.advance(layout);
      }
    }
  }
}

// Rows of the element-wise kernels' channel tiles: each thread keeps this many rows in flight.
constexpr int kRowsInFlight = 4;

// The element-wise kernel for channels-last and 2-D inputs (inner == 1, element (r, c) at
// r * C + c), where consecutive elements belong to different sets. Block (g, b) with blockDim
// (32, R) covers rows [b * chunk, (b + 1) * chunk) of the kPack * 32 channels from
// first = kPack * 32 g; thread (tx, ty) takes channels first + kPack tx + p (p < kPack, read
// with one kPack-wide access) of every R-th row, so that a warp reads a row's consecutive
// channels. The group's tables are staged in shared memory entry-major (entry j of channel
// (tx, p) at (j kPack + p) 32 + tx): the lanes of a warp then look up distinct banks whatever
// their entries, where the per-set tables in global memory would put each lane's look-up on a
// cache line of its own.
template <typename scalar_t, typename acc_t, int kPack, typename index_t, bool kInputGrad>
__global__ void elementwise_rows_kernel(const scalar_t* grad_out, const scalar_t* x,
                                        scalar_t* out, index_t rows, index_t channels,
                                        index_t chunk, DeviceTables<acc_t> tab) {
  extern __shared__ unsigned char smem_raw[];
  auto* table = reinterpret_cast<Piece<acc_t>*>(smem_raw);
  constexpr int kLanes = kTileChannels * kPack;
  const int n = tab.num_intervals;
  const int entries = n + 2;
  const index_t first = static_cast<index_t>(blockIdx.x) * kLanes;
  const int group_channels = static_cast<int>(min(static_cast<index_t>(kLanes), channels - first));
  const int tid = threadIdx.y * kTileChannels + threadIdx.x;
  const Piece<acc_t>* group_pieces = tab.pieces + static_cast<int64_t>(first) * entries;
  for (int e = tid; e < group_channels * entries; e += blockDim.x * blockDim.y) {
    const int local = e / entries;
    const int j = e - local * entries;
    table[(j * kPack + local % kPack) * kTileChannels + local / kPack] = group_pieces[e];
  }
  __syncthreads();
  // The launcher takes kPack > 1 only where C is a multiple of kPack: a thread's channels are
  // all in range or all out.
  const index_t c0 = first + kPack * threadIdx.x;
  if (c0 >= channels) return;
  SetGeometry<acc_t> geo[kPack];
#pragma unroll
  for (int p = 0; p < kPack; ++p) geo[p] = tab.geometry[c0 + p];
  const Piece<acc_t>* lane_table = table + threadIdx.x;
  using V = Vec<scalar_t, kPack>;
  const index_t begin = static_cast<index_t>(blockIdx.y) * chunk;
  const index_t end = begin + chunk < rows ? begin + chunk : rows;
  const index_t row_step = blockDim.y;
  for (index_t r0 = begin + threadIdx.y; r0 < end; r0 += kRowsInFlight * row_step) {
    // Loads of kRowsInFlight rows before their stores: out may be x (pwlu_), which the compiler
    // cannot rule out, so it would not hoist a load above an earlier store by itself.
    V xv[kRowsInFlight], gv[kRowsInFlight];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const index_t r = r0 + u * row_step;
      if (r < end) {
        xv[u] = *reinterpret_cast<const V*>(x + r * channels + c0);
        if (kInputGrad) gv[u] = *reinterpret_cast<const V*>(grad_out + r * channels + c0);
      }
    }
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const index_t r = r0 + u * row_step;
      if (r < end) {
        V result;
#pragma unroll
        for (int p = 0; p < kPack; ++p) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv[u].val[p]) : acc_t(0);
          result.val[p] = static_cast<scalar_t>(element_value<kInputGrad, kPack * kTileChannels>(
              g, static_cast<acc_t>(xv[u].val[p]), geo[p], lane_table + p * kTileChannels, n));
        }
        *reinterpret_cast<V*>(out + r * channels + c0) = result;
      }
    }
  }
}

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

int64_t grid_for(int64_t work, int64_t per_block) {
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks));
}

template <typename scalar_t>
bool aligned_for_vectors(std::initializer_list<const void*> pointers, int vec) {
  const auto align = static_cast<uintptr_t>(sizeof(scalar_t) * vec);
  for (const void* p : pointers) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % align != 0) return false;
  }
  return true;
}

// The (outer, C, inner) layout a kernel walks: layer-wise calls use one set for every element,
// so they walk x as a single channel of numel elements (no per-element channel, and the
// parameter-gradient blocks read x contiguously).
PwluLayout kernel_layout(const PwluCall& call) {
  const PwluLayout& layout = call.layout;
  if (call.params.num_sets == 1) return {1, 1, layout.numel()};
  return layout;
}

// Calls f with the index type of a tensor of `numel` elements: 32-bit (multiply-high divisions)
// where every index fits, else 64-bit.
template <typename F>
void dispatch_index_type(int64_t numel, F&& f) {
  if (numel < std::numeric_limits<int32_t>::max()) {
    f(uint32_t{});
  } else {
    f(int64_t{});
  }
}

// Element-wise blocks of a channels-last or 2-D call: enough row blocks per channel group to
// fill the GPU several times over, each with several rows per thread.
constexpr int64_t kElementwiseRowBlocks = 2048;

// Launches elementwise_rows_kernel over a call with inner == 1 where a channel group's tables
// fit in shared memory; returns whether it did.
template <bool kInputGrad, typename scalar_t, typename acc_t, typename index_t>
bool launch_elementwise_rows(const PwluLayout& layout, const scalar_t* gp, const scalar_t* xp,
                             scalar_t* out, const DeviceTables<acc_t>& tab,
                             cudaStream_t stream) {
  // 16-bit values go two channels per access where the channels pair up.
  constexpr int kPack = sizeof(scalar_t) == 2 ? 2 : 1;
  const bool pack = kPack > 1 && layout.channels % kPack == 0 &&
                    aligned_for_vectors<scalar_t>({gp, xp, out}, kPack);
  const int lanes = (pack ? kPack : 1) * kTileChannels;
  const size_t smem = static_cast<size_t>(lanes) * (tab.num_intervals + 2) * sizeof(Piece<acc_t>);
  if (smem > static_cast<size_t>(kSharedMemoryBytes)) return false;
  const int64_t rows = layout.outer;
  const int64_t groups = (layout.channels + lanes - 1) / lanes;
  const dim3 block(kTileChannels, kThreads / kTileChannels);
  const int64_t rows_per_pass = static_cast<int64_t>(block.y) * kRowsInFlight;
  int64_t row_blocks = std::min<int64_t>(
      {(rows + rows_per_pass - 1) / rows_per_pass,
       std::max<int64_t>(1, kElementwiseRowBlocks / groups), 65535});
  const int64_t chunk = (rows + row_blocks - 1) / row_blocks;
  row_blocks = (rows + chunk - 1) / chunk;
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(row_blocks));
  const auto r = static_cast<index_t>(rows);
  const auto c = static_cast<index_t>(layout.channels);
  const auto k = static_cast<index_t>(chunk);
  if (pack) {
    elementwise_rows_kernel<scalar_t, acc_t, kPack, index_t, kInputGrad>
        <<<grid, block, smem, stream>>>(gp, xp, out, r, c, k, tab);
  } else {
    elementwise_rows_kernel<scalar_t, acc_t, 1, index_t, kInputGrad>
        <<<grid, block, smem, stream>>>(gp, xp, out, r, c, k, tab);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// Launches the element-wise kernels over the call's elements: out = pwlu(x), or with
// kInputGrad out = grad_out * S_j (grad_out unused otherwise).
template <bool kInputGrad, typename scalar_t, typename acc_t>
void launch_elementwise(const PwluCall& call, const scalar_t* gp, const scalar_t* xp,
                        scalar_t* out, const DeviceTables<acc_t>& tab, cudaStream_t stream) {
  const PwluLayout layout = kernel_layout(call);
  const int64_t numel = layout.numel();
  constexpr int kVec = 16 / sizeof(scalar_t);
  dispatch_index_type(numel, [&](auto index) {
    using index_t = decltype(index);
    if (layout.inner == 1 && layout.channels > 1 &&
        launch_elementwise_rows<kInputGrad, scalar_t, acc_t, index_t>(layout, gp, xp, out, tab,
                                                                       stream)) {
      return;
    }
    const LayoutDivisors<index_t> divisors(layout.inner, layout.channels);
    const auto n = static_cast<index_t>(numel);
    if (aligned_for_vectors<scalar_t>({gp, xp, out}, kVec)) {
      const int64_t grid = grid_for(numel, kThreads * kVec);
      if (layout.inner % kVec == 0 || layout.channels == 1) {
        elementwise_kernel<scalar_t, acc_t, kVec, index_t, kInputGrad, true>
            <<<grid, kThreads, 0, stream>>>(gp, xp, out, n, divisors, tab);
      } else {
        elementwise_kernel<scalar_t, acc_t, kVec, index_t, kInputGrad, false>
            <<<grid, kThreads, 0, stream>>>(gp, xp, out, n, divisors, tab);
      }
    } else {
      elementwise_kernel<scalar_t, acc_t, 1, index_t, kInputGrad, false>
          <<<grid_for(numel, kThreads), kThreads, 0, stream>>>(gp, xp, out, n, divisors, tab);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Threads of a histogram block: as many private histograms as the shared memory left after
// `reserved` bytes holds, at most kThreads, in whole warps.
int histogram_threads(int num_intervals, int stride, size_t acc_size, int64_t reserved = 0) {
  const int64_t by_smem =
      (kSharedMemoryBytes - reserved) / (stride * static_cast<int64_t>(acc_size));
  TORCH_CHECK(by_smem >= kTileChannels, "pwlu_backward: too many intervals (", num_intervals,
              ") for the CUDA kernel's shared memory");
  return static_cast<int>(std::min<int64_t>(kThreads, by_smem / 32 * 32));
}

// Blocks per channel for `work` elements: a fixed function of the shape, so that the summation
// order (and the result) is the same on every run.
int64_t blocks_per_channel(int64_t work, int64_t per_block, int64_t channels) {
  const int64_t wanted = std::max<int64_t>(1, (work + per_block - 1) / per_block);
  const int64_t cap = std::max<int64_t>(1, kMaxBlocks / std::max<int64_t>(1, channels));
  return std::min<int64_t>({wanted, 1024, cap});
}

template <typename scalar_t, typename acc_t>
void launch_param_grads(const PwluBackwardCall& call, const scalar_t* gp, const scalar_t* xp,
                        scalar_t* gxp, const DeviceTables<acc_t>& tab, cudaStream_t stream) {
  const PwluLayout layout = kernel_layout(call);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int stride = histogram_stride(n);
  const auto partial_options = call.x.options().dtype(compute_type(call.x));
  at::Tensor partial;
  int64_t blocks = 0;
  dispatch_index_type(layout.numel(), [&](auto index) {
    using index_t = decltype(index);
    if (layout.inner == 1 && layout.channels > 1) {
      const int64_t groups = (layout.channels + kTileChannels - 1) / kTileChannels;
      blocks = blocks_per_channel(layout.outer, kRowsPerBlock, groups);
      const int64_t chunk = (layout.outer + blocks - 1) / blocks;
      partial = at::empty({layout.channels * blocks * width}, partial_options);
      // Staged slopes where they take a small part of the shared memory (any usual N).
      const int64_t slope_bytes = static_cast<int64_t>(n + 2) * kTileChannels * sizeof(acc_t);
      const bool stage = slope_bytes <= kSharedMemoryBytes / 4;
      const int threads = histogram_threads(n, stride, sizeof(acc_t), stage ? slope_bytes : 0);
      const size_t smem = static_cast<size_t>(threads) * stride * sizeof(acc_t) +
                          (stage ? slope_bytes : 0);
      const dim3 block(kTileChannels, threads / kTileChannels);
      const auto grid = static_cast<unsigned>(groups * blocks);
      const auto rows = static_cast<index_t>(layout.outer);
      const auto channels = static_cast<index_t>(layout.channels);
      if (stage) {
        histogram_rows_kernel<scalar_t, acc_t, index_t, true><<<grid, block, smem, stream>>>(
            gp, xp, gxp, rows, channels, blocks, static_cast<index_t>(chunk), tab, stride,
            partial.data_ptr<acc_t>());
      } else {
        histogram_rows_kernel<scalar_t, acc_t, index_t, false><<<grid, block, smem, stream>>>(
            gp, xp, gxp, rows, channels, blocks, static_cast<index_t>(chunk), tab, stride,
            partial.data_ptr<acc_t>());
      }
    } else {
      constexpr int kVec = 16 / sizeof(scalar_t);
      const int64_t per_channel = layout.outer * layout.inner;
      blocks = blocks_per_channel(per_channel, kPlaneElementsPerBlock, layout.channels);
      const bool vectorize = layout.inner % kVec == 0 &&
                             aligned_for_vectors<scalar_t>({gp, xp, gxp}, kVec);
      const int64_t step = vectorize ? kVec : 1;
      const int64_t chunk = ((per_channel + blocks - 1) / blocks + step - 1) / step * step;
      partial = at::empty({layout.channels * blocks * width}, partial_options);
      const int threads = histogram_threads(n, stride, sizeof(acc_t));
      const size_t smem = static_cast<size_t>(threads) * stride * sizeof(acc_t);
      const LayoutDivisors<index_t> divisors(layout.inner, layout.channels);
      const auto grid = static_cast<unsigned>(layout.channels * blocks);
      if (vectorize) {
        histogram_planes_kernel<scalar_t, acc_t, kVec, index_t><<<grid, threads, smem, stream>>>(
            gp, xp, gxp, static_cast<index_t>(per_channel), blocks, static_cast<index_t>(chunk),
            divisors, tab, stride, partial.data_ptr<acc_t>());
      } else {
        histogram_planes_kernel<scalar_t, acc_t, 1, index_t><<<grid, threads, smem, stream>>>(
            gp, xp, gxp, static_cast<index_t>(per_channel), blocks, static_cast<index_t>(chunk),
            divisors, tab, stride, partial.data_ptr<acc_t>());
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Set s owns partials [s * blocks, (s + 1) * blocks): kernel_layout makes a layer-wise call
  // one channel.
  const int64_t count = blocks;
  const int final_threads = 256;
  const int lanes = std::max(1, final_threads / width);
  const size_t final_smem = ((lanes + 1) * width + n + 2) * sizeof(acc_t);
  param_grad_final_kernel<acc_t>
      <<<static_cast<unsigned>(call.params.num_sets), final_threads, final_smem, stream>>>(
          partial.data_ptr<acc_t>(), count, tab, call.param_grad_out<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pwlu_forward_cuda(const at::Tensor& x, const at::Tensor& points,
                             const at::Tensor& left_bound, const at::Tensor& right_bound,
                             const at::Tensor& left_slope, const at::Tensor& right_slope,
                             double range_eps) {
  // Checked before the guard, so that a CPU x with CUDA parameters gets the op's own message.
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(call.x, call.x.options(), call.format);
  if (x.numel() == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        TableStorage<acc_t> tables(call.params, stream);
        launch_elementwise<false, scalar_t, acc_t>(call, nullptr,
                                                   call.x.const_data_ptr<scalar_t>(),
                                                   y.data_ptr<scalar_t>(), tables.view, stream);
      });
  return y;
}

// pwlu_ on CUDA: in place when x is dense in its memory format (every element is read, then
// written, by one thread); otherwise computed into a dense copy and copied back.
void pwlu_inplace_cuda(at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                       const at::Tensor& right_bound, const at::Tensor& left_slope,
                       const at::Tensor& right_slope, double range_eps) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_inplace_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        TableStorage<acc_t> tables(call.params, stream);
        // call.x is x itself when x is dense; otherwise a private copy that x then takes.
        at::Tensor out = call.x;
        launch_elementwise<false, scalar_t, acc_t>(call, nullptr, out.const_data_ptr<scalar_t>(),
                                                   out.data_ptr<scalar_t>(), tables.view,
                                                   stream);
        if (!out.is_same(x)) x.copy_(out);
      });
}

PwluGrads pwlu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& x,
                             const at::Tensor& points, const at::Tensor& left_bound,
                             const at::Tensor& right_bound, const at::Tensor& left_slope,
                             const at::Tensor& right_slope, double range_eps, bool input_grad,
                             bool param_grads) {
  const PwluBackwardCall call = prepare_backward(grad_output, x, points, left_bound, right_bound,
                                                 left_slope, right_slope, range_eps, input_grad,
                                                 param_grads);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() > 0 && (input_grad || param_grads)) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          TableStorage<acc_t> tables(call.params, stream);
          const scalar_t* gp = call.grad_output.const_data_ptr<scalar_t>();
          const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
          scalar_t* gxp = input_grad ? call.grad_x.data_ptr<scalar_t>() : nullptr;
          if (param_grads) {
            launch_param_grads<scalar_t, acc_t>(call, gp, xp, gxp, tables.view, stream);
          } else {
            launch_elementwise<true, scalar_t, acc_t>(call, gp, xp, gxp, tables.view, stream);
          }
        });
  }
  return pack_grads(call, points);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CUDA, m) {
  m.impl("pwlu", &pwlu_forward_cuda);
  m.impl("pwlu_", &pwlu_inplace_cuda);
  m.impl("pwlu_backward", &pwlu_backward_cuda);
}

}  // namespace ops
}  // namespace pwlu_mmdet
