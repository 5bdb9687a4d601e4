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

// The element-wise kernels' value of one element of set s: pwlu(x) (forward), or
// g * S_j (the input gradient alone: phase I, frozen parameters).
template <bool kInputGrad, typename acc_t>
__device__ __forceinline__ acc_t element_value(acc_t g, acc_t x, const DeviceTables<acc_t>& tab,
                                               int64_t s) {
  const SetGeometry<acc_t> geo = tab.geometry[s];
  const int j =
      table_entry(interval_coordinate(x, geo.left_bound, geo.inv_width), tab.num_intervals);
  const Piece<acc_t> p = tab.pieces[s * (tab.num_intervals + 2) + j];
  return kInputGrad ? g * p.slope : apply_piece(x, p.slope, p.intercept);
}

// out = pwlu(x), or out = grad_out * S_j with kInputGrad, element-wise. out may be x (pwlu_):
// every element is read, then written, by one thread. Each thread handles kVec consecutive
// elements per step (16-byte accesses) when vectorised.
template <typename scalar_t, typename acc_t, int kVec, typename index_t, bool kInputGrad>
__global__ void elementwise_kernel(const scalar_t* grad_out, const scalar_t* x, scalar_t* out,
                                   index_t numel, LayoutDivisors<index_t> layout,
                                   DeviceTables<acc_t> tab) {
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
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const acc_t g = kInputGrad ? static_cast<acc_t>(gv.val[v]) : acc_t(0);
        result.val[v] = static_cast<scalar_t>(element_value<kInputGrad>(
            g, static_cast<acc_t>(xv.val[v]), tab, static_cast<int64_t>(cursor.set)));
        cursor.advance(layout);
      }
      *reinterpret_cast<V*>(out + base) = result;
    } else {
      for (index_t i = base; i < numel && i < base + kVec; ++i) {
        const acc_t g = kInputGrad ? static_cast<acc_t>(grad_out[i]) : acc_t(0);
        out[i] = static_cast<scalar_t>(element_value<kInputGrad>(
            g, static_cast<acc_t>(x[i]), tab, static_cast<int64_t>(cursor.set)));
        cursor.advance(layout);
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

// Histogram of one element of set s (and its grad_x, when wanted).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void backward_element(acc_t g, acc_t x, const SetGeometry<acc_t>& geo,
                                                 const Piece<acc_t>* pieces, int n,
                                                 acc_t* histogram, scalar_t* grad_x) {
  const acc_t t = interval_coordinate(x, geo.left_bound, geo.inv_width);
  const int j = table_entry(t, n);
  if (grad_x) *grad_x = static_cast<scalar_t>(g * pieces[j].slope);
  accumulate_element(histogram, g, t, j, n);
}

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
  const Piece<acc_t>* pieces = tab.pieces + s * (n + 2);
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
        backward_element<scalar_t, acc_t>(static_cast<acc_t>(gv.val[v]),
                                          static_cast<acc_t>(xv.val[v]), geo, pieces, n, mine,
                                          &out.val[v]);
      }
      if (grad_x) *reinterpret_cast<Vec<scalar_t, kVec>*>(grad_x + i) = out;
    } else {
      backward_element<scalar_t, acc_t>(static_cast<acc_t>(grad_out[i]),
                                        static_cast<acc_t>(x[i]), geo, pieces, n, mine,
                                        grad_x ? grad_x + i : nullptr);
    }
  }
  sum_histograms(smem, blockDim.x, width, stride,
                 partial + static_cast<int64_t>(blockIdx.x) * width);
}

// Stage 1, channels-last and 2-D inputs (inner == 1, element (r, c) at r * C + c): block
// (g, b) with blockDim (32, R) sums rows [b * chunk, (b + 1) * chunk) of channels
// [32 g, 32 g + 32); thread (tx, ty) takes channel 32 g + tx and every R-th row, so that a
// warp reads 32 consecutive channels of one row. partial[(c * blocks + b) * W] as the planar
// kernel.
template <typename scalar_t, typename acc_t, typename index_t>
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

  if (c < channels) {
    const SetGeometry<acc_t> geo = tab.geometry[c];
    const Piece<acc_t>* pieces = tab.pieces + static_cast<int64_t>(c) * (n + 2);
    const index_t begin = b * chunk;
    const index_t end = begin + chunk < rows ? begin + chunk : rows;
#pragma unroll 4
    for (index_t r = begin + threadIdx.y; r < end; r += blockDim.y) {
      const index_t i = r * channels + c;
      backward_element<scalar_t, acc_t>(static_cast<acc_t>(grad_out[i]),
                                        static_cast<acc_t>(x[i]), geo, pieces, n, mine,
                                        grad_x ? grad_x + i : nullptr);
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

// Launches elementwise_kernel over the call's elements: out = pwlu(x), or with kInputGrad
// out = grad_out * S_j (grad_out unused otherwise).
template <bool kInputGrad, typename scalar_t, typename acc_t>
void launch_elementwise(const PwluCall& call, const scalar_t* gp, const scalar_t* xp,
                        scalar_t* out, const DeviceTables<acc_t>& tab, cudaStream_t stream) {
  const PwluLayout layout = kernel_layout(call);
  const int64_t numel = layout.numel();
  constexpr int kVec = 16 / sizeof(scalar_t);
  dispatch_index_type(numel, [&](auto index) {
    using index_t = decltype(index);
    const LayoutDivisors<index_t> divisors(layout.inner, layout.channels);
    if (aligned_for_vectors<scalar_t>({gp, xp, out}, kVec)) {
      elementwise_kernel<scalar_t, acc_t, kVec, index_t, kInputGrad>
          <<<grid_for(numel, kThreads * kVec), kThreads, 0, stream>>>(
              gp, xp, out, static_cast<index_t>(numel), divisors, tab);
    } else {
      elementwise_kernel<scalar_t, acc_t, 1, index_t, kInputGrad>
          <<<grid_for(numel, kThreads), kThreads, 0, stream>>>(
              gp, xp, out, static_cast<index_t>(numel), divisors, tab);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Threads of a histogram block: as many private histograms as the shared memory holds, at most
// kThreads, in whole warps.
int histogram_threads(int num_intervals, int stride, size_t acc_size) {
  const int64_t by_smem = kSharedMemoryBytes / (stride * static_cast<int64_t>(acc_size));
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
  const int threads = histogram_threads(n, stride, sizeof(acc_t));
  const size_t smem = static_cast<size_t>(threads) * stride * sizeof(acc_t);
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
      const dim3 block(kTileChannels, threads / kTileChannels);
      histogram_rows_kernel<scalar_t, acc_t, index_t>
          <<<static_cast<unsigned>(groups * blocks), block, smem, stream>>>(
              gp, xp, gxp, static_cast<index_t>(layout.outer),
              static_cast<index_t>(layout.channels), blocks, static_cast<index_t>(chunk), tab,
              stride, partial.data_ptr<acc_t>());
    } else {
      constexpr int kVec = 16 / sizeof(scalar_t);
      const int64_t per_channel = layout.outer * layout.inner;
      blocks = blocks_per_channel(per_channel, kPlaneElementsPerBlock, layout.channels);
      const bool vectorize = layout.inner % kVec == 0 &&
                             aligned_for_vectors<scalar_t>({gp, xp, gxp}, kVec);
      const int64_t step = vectorize ? kVec : 1;
      const int64_t chunk = ((per_channel + blocks - 1) / blocks + step - 1) / step * step;
      partial = at::empty({layout.channels * blocks * width}, partial_options);
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
