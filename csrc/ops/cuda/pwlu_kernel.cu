// CUDA kernels of pwlu_mmdet::pwlu and pwlu_mmdet::pwlu_backward.
//
// Mirrors cpu/pwlu_kernel.cpp and uses the same per-element arithmetic (pwlu_element.h).
// 1. A tiny kernel turns the raw parameters into per-set ranges and (slope, intercept) tables.
// 2. The forward is element-wise: one table look-up and one multiply-add per element, with
//    16-byte vector loads and stores when the buffers allow.
// 3. The backward writes grad_x element-wise and, when parameter gradients are wanted, builds
//    the gradient histograms deterministically in two stages: every block sums a fixed slice of
//    one channel (each thread in a private shared-memory histogram, then the threads in a fixed
//    order), and a second kernel adds the block partials in a fixed order and converts them to
//    parameter gradients. No float atomics: two backward passes give bit-identical gradients.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../pwlu_common.h"
#include "../pwlu_element.h"

namespace pwlu_mmdet {
namespace ops {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

// Device view of the tables: ranges[s], and slopes / intercepts [s * (N + 2) + j].
template <typename acc_t>
struct DeviceTables {
  const PwluRange<acc_t>* ranges;
  const acc_t* slopes;
  const acc_t* intercepts;
  int num_intervals;
  bool shared;  // layer-wise: one set for every channel
};

template <typename acc_t>
__global__ void build_tables_kernel(const acc_t* __restrict__ points,
                                    const acc_t* __restrict__ left_bound,
                                    const acc_t* __restrict__ right_bound,
                                    const acc_t* __restrict__ left_slope,
                                    const acc_t* __restrict__ right_slope, int64_t num_sets,
                                    int num_intervals, acc_t range_eps,
                                    PwluRange<acc_t>* ranges, acc_t* slopes,
                                    acc_t* intercepts) {
  const int entries = num_intervals + 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= num_sets * entries) return;
  const int64_t s = i / entries;
  const int j = static_cast<int>(i % entries);
  const PwluRange<acc_t> r =
      make_range<acc_t>(left_bound[s], right_bound[s], num_intervals, range_eps);
  if (j == 0) ranges[s] = r;
  table_pair<acc_t, acc_t>(points + s * (num_intervals + 1), r, left_slope[s], right_slope[s],
                           j, slopes + i, intercepts + i);
}

// Owns the device memory of the tables for the duration of one call.
template <typename acc_t>
struct TableStorage {
  at::Tensor ranges, slopes, intercepts;
  DeviceTables<acc_t> view;

  TableStorage(const PwluParams& p, cudaStream_t stream) {
    const int n = static_cast<int>(p.num_intervals);
    const int64_t total = p.num_sets * (n + 2);
    const auto opts = p.points.options();
    static_assert(sizeof(PwluRange<acc_t>) % sizeof(acc_t) == 0, "range layout");
    ranges = at::empty({p.num_sets * static_cast<int64_t>(sizeof(PwluRange<acc_t>) /
                                                          sizeof(acc_t))},
                       opts);
    slopes = at::empty({total}, opts);
    intercepts = at::empty({total}, opts);
    const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
    build_tables_kernel<acc_t><<<blocks, kThreads, 0, stream>>>(
        p.points.data_ptr<acc_t>(), p.left_bound.data_ptr<acc_t>(),
        p.right_bound.data_ptr<acc_t>(), p.left_slope.data_ptr<acc_t>(),
        p.right_slope.data_ptr<acc_t>(), p.num_sets, n, static_cast<acc_t>(p.range_eps),
        reinterpret_cast<PwluRange<acc_t>*>(ranges.data_ptr<acc_t>()), slopes.data_ptr<acc_t>(),
        intercepts.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    view = {reinterpret_cast<const PwluRange<acc_t>*>(ranges.data_ptr<acc_t>()),
            slopes.data_ptr<acc_t>(), intercepts.data_ptr<acc_t>(), n, p.num_sets == 1};
  }
};

// Parameter set of the element at flat offset i of a (outer, C, inner) tensor.
__device__ __forceinline__ int64_t set_of(int64_t i, int64_t channels, int64_t inner,
                                          bool shared) {
  return shared ? 0 : (i / inner) % channels;
}

template <typename acc_t>
__device__ __forceinline__ acc_t forward_element(acc_t x, int64_t s,
                                                 const DeviceTables<acc_t>& tab) {
  const PwluRange<acc_t> r = tab.ranges[s];
  const int64_t e = s * (tab.num_intervals + 2);
  return forward_value(x, r.left_bound, r.inv_width, tab.num_intervals, tab.slopes + e,
                       tab.intercepts + e);
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// Element-wise forward; each thread handles kVec consecutive elements (one 16-byte access) when
// vectorized, else one element.
template <typename scalar_t, typename acc_t, int kVec>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                               int64_t numel, int64_t channels, int64_t inner,
                               DeviceTables<acc_t> tab) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kVec;
  for (int64_t base = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * kVec;
       base < numel; base += stride) {
    if (kVec > 1 && base + kVec <= numel) {
      Vec<scalar_t, kVec> in = *reinterpret_cast<const Vec<scalar_t, kVec>*>(x + base);
      Vec<scalar_t, kVec> out;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const int64_t s = set_of(base + v, channels, inner, tab.shared);
        out.val[v] = static_cast<scalar_t>(
            forward_element<acc_t>(static_cast<acc_t>(in.val[v]), s, tab));
      }
      *reinterpret_cast<Vec<scalar_t, kVec>*>(y + base) = out;
    } else {
      for (int64_t i = base; i < numel && i < base + kVec; ++i) {
        const int64_t s = set_of(i, channels, inner, tab.shared);
        y[i] = static_cast<scalar_t>(forward_element<acc_t>(static_cast<acc_t>(x[i]), s, tab));
      }
    }
  }
}

// grad_x only (phase I / frozen parameters): grad_x = g * S_j.
template <typename scalar_t, typename acc_t>
__global__ void input_grad_kernel(const scalar_t* __restrict__ grad_out,
                                  const scalar_t* __restrict__ x, scalar_t* __restrict__ grad_x,
                                  int64_t numel, int64_t channels, int64_t inner,
                                  DeviceTables<acc_t> tab) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += stride) {
    const int64_t s = set_of(i, channels, inner, tab.shared);
    const PwluRange<acc_t> r = tab.ranges[s];
    const int j = table_entry(
        interval_coordinate(static_cast<acc_t>(x[i]), r.left_bound, r.inv_width),
        tab.num_intervals);
    const acc_t slope = __ldg(tab.slopes + s * (tab.num_intervals + 2) + j);
    grad_x[i] = static_cast<scalar_t>(static_cast<acc_t>(grad_out[i]) * slope);
  }
}

// Stage 1 of the parameter-gradient reduction: the gradient histograms (pwlu_element.h).
// Block c * blocks + b handles elements [b * chunk, (b + 1) * chunk) of channel c (element e of
// channel c lies at (e / inner * C + c) * inner + e % inner); each thread sums into its own
// shared-memory histogram, then the threads' histograms are added in thread order and written
// to partial[blockIdx.x * W], W = histogram_width(N).
template <typename scalar_t, typename acc_t>
__global__ void histogram_partial_kernel(const scalar_t* __restrict__ grad_out,
                                         const scalar_t* __restrict__ x,
                                         scalar_t* __restrict__ grad_x, int64_t per_channel,
                                         int64_t blocks, int64_t chunk, int64_t channels,
                                         int64_t inner, DeviceTables<acc_t> tab,
                                         acc_t* __restrict__ partial) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int64_t c = blockIdx.x / blocks;
  const int64_t b = blockIdx.x % blocks;
  const int64_t s = tab.shared ? 0 : c;
  acc_t* mine = smem + threadIdx.x * width;
  for (int w = 0; w < width; ++w) mine[w] = acc_t(0);

  const PwluRange<acc_t> r = tab.ranges[s];
  const acc_t* slopes = tab.slopes + s * (n + 2);
  const int64_t begin = b * chunk;
  const int64_t end = begin + chunk < per_channel ? begin + chunk : per_channel;
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const int64_t i = (e / inner * channels + c) * inner + e % inner;
    const acc_t g = static_cast<acc_t>(grad_out[i]);
    const acc_t t = interval_coordinate(static_cast<acc_t>(x[i]), r.left_bound, r.inv_width);
    const int j = table_entry(t, n);
    if (grad_x) grad_x[i] = static_cast<scalar_t>(g * __ldg(slopes + j));
    accumulate_element(mine, g, t, j, n);
  }
  __syncthreads();
  acc_t* out = partial + static_cast<int64_t>(blockIdx.x) * width;
  for (int w = threadIdx.x; w < width; w += blockDim.x) {
    acc_t sum = acc_t(0);
    for (int k = 0; k < static_cast<int>(blockDim.x); ++k) sum += smem[k * width + w];
    out[w] = sum;
  }
}

// Stage 2, one block per parameter set: adds the set's partial histograms (its channels' blocks,
// in index order), then converts the histogram into the set's parameter gradients.
template <typename acc_t>
__global__ void param_grad_final_kernel(const acc_t* __restrict__ partial, int64_t channels,
                                        int64_t blocks, DeviceTables<acc_t> tab,
                                        ParamGradOut<acc_t> grads) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* histogram = reinterpret_cast<acc_t*>(smem_raw);
  const int n = tab.num_intervals;
  const int width = histogram_width(n);
  const int64_t s = blockIdx.x;
  const int64_t c_begin = tab.shared ? 0 : s;
  const int64_t c_end = tab.shared ? channels : s + 1;
  for (int w = threadIdx.x; w < width; w += blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t b = 0; b < blocks; ++b) sum += partial[(c * blocks + b) * width + w];
    }
    histogram[w] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    histogram_to_param_grads(histogram, tab.slopes + s * (n + 2), tab.ranges[s], grads, s);
  }
}

int64_t grid_for(int64_t work, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, kMaxBlocks));
}

template <typename scalar_t>
bool can_vectorize(const void* a, const void* b, int vec) {
  const auto align = static_cast<uintptr_t>(sizeof(scalar_t) * vec);
  return reinterpret_cast<uintptr_t>(a) % align == 0 && reinterpret_cast<uintptr_t>(b) % align == 0;
}

at::Tensor pwlu_forward_cuda(const at::Tensor& x, const at::Tensor& points,
                             const at::Tensor& left_bound, const at::Tensor& right_bound,
                             const at::Tensor& left_slope, const at::Tensor& right_slope,
                             double range_eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  at::Tensor y = at::empty_like(call.x, call.x.options(), call.format);
  if (x.numel() == 0) return y;
  const PwluLayout& layout = call.layout;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        TableStorage<acc_t> tables(call.params, stream);
        const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        const int64_t numel = layout.numel();
        constexpr int kVec = 16 / sizeof(scalar_t);
        if (can_vectorize<scalar_t>(xp, yp, kVec)) {
          forward_kernel<scalar_t, acc_t, kVec>
              <<<grid_for(numel, kThreads * kVec), kThreads, 0, stream>>>(
                  xp, yp, numel, layout.channels, layout.inner, tables.view);
        } else {
          forward_kernel<scalar_t, acc_t, 1><<<grid_for(numel, kThreads), kThreads, 0, stream>>>(
              xp, yp, numel, layout.channels, layout.inner, tables.view);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return y;
}

// pwlu_ on CUDA: out of place, then copied (the caching allocator makes the output cheap).
void pwlu_inplace_cuda(at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                       const at::Tensor& right_bound, const at::Tensor& left_slope,
                       const at::Tensor& right_slope, double range_eps) {
  x.copy_(pwlu_forward_cuda(x, points, left_bound, right_bound, left_slope, right_slope,
                            range_eps));
}

PwluGrads pwlu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& x,
                             const at::Tensor& points, const at::Tensor& left_bound,
                             const at::Tensor& right_bound, const at::Tensor& left_slope,
                             const at::Tensor& right_slope, double range_eps, bool input_grad,
                             bool param_grads) {
  const c10::cuda::CUDAGuard guard(x.device());
  const PwluBackwardCall call = prepare_backward(grad_output, x, points, left_bound, right_bound,
                                                 left_slope, right_slope, range_eps, input_grad,
                                                 param_grads);
  const int64_t n = points.size(1) - 1;
  const int64_t num_sets = points.size(0);
  if (x.numel() > 0 && (input_grad || param_grads)) {
    const PwluLayout& layout = call.layout;
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          TableStorage<acc_t> tables(call.params, stream);
          const scalar_t* gp = call.grad_output.const_data_ptr<scalar_t>();
          const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
          scalar_t* gxp = input_grad ? call.grad_x.data_ptr<scalar_t>() : nullptr;
          if (!param_grads) {
            input_grad_kernel<scalar_t, acc_t>
                <<<grid_for(layout.numel(), kThreads), kThreads, 0, stream>>>(
                    gp, xp, gxp, layout.numel(), layout.channels, layout.inner, tables.view);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            return;
          }
          // Block count per channel depends on the shape only, so the summation order (and the
          // result) is the same on every run.
          const int64_t per_channel = layout.outer * layout.inner;
          const int64_t blocks = std::min<int64_t>(
              std::max<int64_t>(1, (per_channel + 4095) / 4096), 1024);
          const int64_t chunk = (per_channel + blocks - 1) / blocks;
          // Each thread owns a shared-memory histogram; fewer threads when K is large.
          const int width = histogram_width(static_cast<int>(n));
          const int64_t by_smem = static_cast<int64_t>(48 * 1024) / (width * sizeof(acc_t));
          TORCH_CHECK(by_smem >= 1, "pwlu_backward: too many intervals (", n,
                      ") for the CUDA kernel's shared memory");
          const int threads = static_cast<int>(
              by_smem >= 32 ? std::min<int64_t>(kThreads, by_smem / 32 * 32) : by_smem);
          at::Tensor partial =
              at::empty({layout.channels * blocks * width}, x.options().dtype(compute_type(x)));
          histogram_partial_kernel<scalar_t, acc_t>
              <<<static_cast<unsigned>(layout.channels * blocks), threads,
                 threads * width * sizeof(acc_t), stream>>>(
                  gp, xp, gxp, per_channel, blocks, chunk, layout.channels, layout.inner,
                  tables.view, partial.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          param_grad_final_kernel<acc_t>
              <<<static_cast<unsigned>(num_sets), 32, width * sizeof(acc_t), stream>>>(
                  partial.data_ptr<acc_t>(), layout.channels, blocks, tables.view,
                  call.param_grad_out<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
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
