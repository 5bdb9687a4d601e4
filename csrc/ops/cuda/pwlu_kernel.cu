// CUDA kernels of pwlu_mmdet::pwlu, pwlu_ and pwlu_backward: their launchers and registration.
//
// Mirrors cpu/pwlu_kernel.cpp and uses the same per-element arithmetic (pwlu_element.h).
// 1. A tiny kernel turns the raw parameters into per-set geometry and (slope, intercept) tables
//    (pwlu_tables.cuh).
// 2. The forward and the input gradient are element-wise (pwlu_elementwise.cuh): one table
//    look-up and one multiply-add per element, 16-byte vector accesses where the buffers allow,
//    and the channel found once per vector (a multiply-high division, then a running counter).
// 3. The parameter gradients are histograms built deterministically in two stages
//    (pwlu_histograms.cuh).
// The launchers below choose each kernel's grid from the shape alone, so that the summation
// order, and the result, never depend on the GPU.
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
#include "pwlu_elementwise.cuh"
#include "pwlu_histograms.cuh"
#include "pwlu_tables.cuh"

namespace pwlu_mmdet {
namespace ops {

namespace {

// Threads of a block: eight warps, enough to hide memory latency with several blocks per SM.
constexpr int kThreads = 256;
// Grids stop here and grid-stride loops do the rest: eight times the 65535 blocks of the oldest
// grid limit fills any GPU many times over.
constexpr int64_t kMaxBlocks = 65535 * 8;
// gridDim.y and gridDim.z may not exceed this.
constexpr int64_t kMaxGridY = 65535;
// Dynamic shared memory a block may use without opting in to more, on every architecture.
constexpr int64_t kSharedMemoryBytes = 48 * 1024;
// Accesses of the element-wise and planar histogram kernels: 16-byte vectors, the widest load.
constexpr int kVectorBytes = 16;
// Work of one parameter-gradient block: enough elements to amortise its histogram reduction,
// few enough that a ResNet stage's channels fill the GPU with blocks.
constexpr int64_t kPlaneElementsPerBlock = 4096;
constexpr int64_t kRowsPerBlock = 256;
// Blocks that share one channel's parameter gradients: stage 2 adds this many partial
// histograms per set at most, and the partials' memory stays bounded.
constexpr int64_t kMaxBlocksPerChannel = 1024;
// Threads of a stage-2 block (param_grad_final_kernel), one block per set.
constexpr int kFinalThreads = 256;
// The channels-last backward stages the tile's slopes in shared memory where they take at most
// this much of it, leaving the rest to the threads' private histograms.
constexpr int64_t kMaxStagedSlopeBytes = kSharedMemoryBytes / 4;

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
       std::max<int64_t>(1, kElementwiseRowBlocks / groups), kMaxGridY});
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
  constexpr int kVec = kVectorBytes / sizeof(scalar_t);
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
  TORCH_CHECK(by_smem >= kWarpSize, "pwlu_backward: too many intervals (", num_intervals,
              ") for the CUDA kernel's shared memory");
  return static_cast<int>(std::min<int64_t>(kThreads, by_smem / kWarpSize * kWarpSize));
}

// Blocks per channel for `work` elements: a fixed function of the shape, so that the summation
// order (and the result) is the same on every run.
int64_t blocks_per_channel(int64_t work, int64_t per_block, int64_t channels) {
  const int64_t wanted = std::max<int64_t>(1, (work + per_block - 1) / per_block);
  const int64_t cap = std::max<int64_t>(1, kMaxBlocks / std::max<int64_t>(1, channels));
  return std::min<int64_t>({wanted, kMaxBlocksPerChannel, cap});
}

// Stage 1's partial histograms: partial[(c * blocks + b) * W], W = histogram_width(N), for
// block b of channel c.
struct Partials {
  at::Tensor partial;
  int64_t blocks = 0;
};

// Stage 1 over channels-last and 2-D inputs (inner == 1): histogram_rows_kernel.
template <typename scalar_t, typename acc_t, typename index_t>
Partials launch_histogram_rows(const PwluLayout& layout, const scalar_t* gp, const scalar_t* xp,
                               scalar_t* gxp, const DeviceTables<acc_t>& tab,
                               const at::TensorOptions& options, cudaStream_t stream) {
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int stride = histogram_stride(n);
  Partials out;
  const int64_t groups = (layout.channels + kTileChannels - 1) / kTileChannels;
  const int64_t blocks = blocks_per_channel(layout.outer, kRowsPerBlock, groups);
  out.blocks = blocks;
  const int64_t chunk = (layout.outer + blocks - 1) / blocks;
  out.partial = at::empty({layout.channels * blocks * width}, options);
  // Staged slopes where they take a small part of the shared memory (any usual N).
  const int64_t slope_bytes = static_cast<int64_t>(n + 2) * kTileChannels * sizeof(acc_t);
  const bool stage = slope_bytes <= kMaxStagedSlopeBytes;
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
        out.partial.data_ptr<acc_t>());
  } else {
    histogram_rows_kernel<scalar_t, acc_t, index_t, false><<<grid, block, smem, stream>>>(
        gp, xp, gxp, rows, channels, blocks, static_cast<index_t>(chunk), tab, stride,
        out.partial.data_ptr<acc_t>());
  }
  return out;
}

// Stage 1 over planes (inner > 1, or a layer-wise call as one plane): histogram_planes_kernel.
template <typename scalar_t, typename acc_t, typename index_t>
Partials launch_histogram_planes(const PwluLayout& layout, const scalar_t* gp,
                                 const scalar_t* xp, scalar_t* gxp,
                                 const DeviceTables<acc_t>& tab,
                                 const at::TensorOptions& options, cudaStream_t stream) {
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int stride = histogram_stride(n);
  Partials out;
  constexpr int kVec = kVectorBytes / sizeof(scalar_t);
  const int64_t per_channel = layout.outer * layout.inner;
  const int64_t blocks = blocks_per_channel(per_channel, kPlaneElementsPerBlock, layout.channels);
  out.blocks = blocks;
  const bool vectorize = layout.inner % kVec == 0 &&
                         aligned_for_vectors<scalar_t>({gp, xp, gxp}, kVec);
  const int64_t step = vectorize ? kVec : 1;
  const int64_t chunk = ((per_channel + blocks - 1) / blocks + step - 1) / step * step;
  out.partial = at::empty({layout.channels * blocks * width}, options);
  const int threads = histogram_threads(n, stride, sizeof(acc_t));
  const size_t smem = static_cast<size_t>(threads) * stride * sizeof(acc_t);
  const LayoutDivisors<index_t> divisors(layout.inner, layout.channels);
  const auto grid = static_cast<unsigned>(layout.channels * blocks);
  if (vectorize) {
    histogram_planes_kernel<scalar_t, acc_t, kVec, index_t><<<grid, threads, smem, stream>>>(
        gp, xp, gxp, static_cast<index_t>(per_channel), blocks, static_cast<index_t>(chunk),
        divisors, tab, stride, out.partial.data_ptr<acc_t>());
  } else {
    histogram_planes_kernel<scalar_t, acc_t, 1, index_t><<<grid, threads, smem, stream>>>(
        gp, xp, gxp, static_cast<index_t>(per_channel), blocks, static_cast<index_t>(chunk),
        divisors, tab, stride, out.partial.data_ptr<acc_t>());
  }
  return out;
}

// The parameter gradients of a backward call: stage 1 (partial histograms), then stage 2.
template <typename scalar_t, typename acc_t>
void launch_param_grads(const PwluBackwardCall& call, const scalar_t* gp, const scalar_t* xp,
                        scalar_t* gxp, const DeviceTables<acc_t>& tab, cudaStream_t stream) {
  const PwluLayout layout = kernel_layout(call);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const auto partial_options = call.x.options().dtype(compute_type(call.x));
  Partials partials;
  dispatch_index_type(layout.numel(), [&](auto index) {
    using index_t = decltype(index);
    if (layout.inner == 1 && layout.channels > 1) {
      partials = launch_histogram_rows<scalar_t, acc_t, index_t>(layout, gp, xp, gxp, tab,
                                                                 partial_options, stream);
    } else {
      partials = launch_histogram_planes<scalar_t, acc_t, index_t>(layout, gp, xp, gxp, tab,
                                                                   partial_options, stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Set s owns partials [s * blocks, (s + 1) * blocks): kernel_layout makes a layer-wise call
  // one channel.
  const int64_t count = partials.blocks;
  const int lanes = std::max(1, kFinalThreads / width);
  const size_t final_smem = ((lanes + 1) * width + n + 2) * sizeof(acc_t);
  param_grad_final_kernel<acc_t>
      <<<static_cast<unsigned>(call.params.num_sets), kFinalThreads, final_smem, stream>>>(
          partials.partial.data_ptr<acc_t>(), count, tab, call.param_grad_out<acc_t>());
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
