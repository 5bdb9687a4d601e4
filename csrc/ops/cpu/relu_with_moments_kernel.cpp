// CPU kernel of pwlu_mmdet::relu_with_moments: PWLU's phase I (ReLU output plus the input's
// per-channel statistics) in one pass over x instead of three.
//
// x is cut into chunks of at most kMomentsChunk elements of one statistics set; each chunk is
// read twice while it is in cache (sum, then squared deviations from the chunk's mean), and
// chunks are combined exactly (moments.h) in an order that depends on the shape only.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../moments.h"
#include "../pwlu_common.h"
#include "cpu_clones.h"
#include "pwlu_parallel.h"

namespace pwlu_mmdet {
namespace ops {

namespace {

// Elements of a chunk: its second pass (the squared deviations) still finds it in L1.
constexpr int64_t kMomentsChunk = 4096;
// Elements of a parallel task over a whole-tensor (not per-channel) statistic, and of a
// sub-block of interleaved rows whose two passes stay in cache.
constexpr int64_t kMomentsBlockElements = 4 * kMomentsChunk;
// The interleaved-row statistics cut the rows into one block per kMomentsRowBlockElements
// elements, so that a few channel groups still give every thread work; each block adds C
// moments, which 2^18 elements amortise.
constexpr int64_t kMomentsRowBlockElements = int64_t(1) << 18;

// y = relu(x) over `len` consecutive elements (NaN stays NaN, as torch.relu); returns the sum
// of x.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE acc_t relu_sum_impl(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                      int64_t len) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < len; ++k) {
    const acc_t v = static_cast<acc_t>(x[k]);
    sum += v;
    y[k] = from_acc<scalar_t, acc_t>(v < acc_t(0) ? acc_t(0) : v);
  }
  return sum;
}

// Sum of squared deviations of `len` consecutive elements from `mean`.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE acc_t squared_deviations_impl(const scalar_t* __restrict__ x, int64_t len,
                                                acc_t mean) {
  acc_t m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t k = 0; k < len; ++k) {
    const acc_t d = static_cast<acc_t>(x[k]) - mean;
    m2 += d * d;
  }
  return m2;
}

// `rows` rows (stride `stride`) of `channels` interleaved channels: y = relu(x),
// sum[c] += x[c]. A whole block per call: a row of one channel group is only 64 elements.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void relu_sum_rows_impl(const scalar_t* __restrict__ x,
                                          scalar_t* __restrict__ y, int64_t rows,
                                          int64_t stride, int64_t channels,
                                          acc_t* __restrict__ sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + r * stride;
    scalar_t* yr = y + r * stride;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t v = static_cast<acc_t>(xr[c]);
      sum[c] += v;
      yr[c] = from_acc<scalar_t, acc_t>(v < acc_t(0) ? acc_t(0) : v);
    }
  }
}

// m2[c] += (x[c] - mean[c])^2 over the rows.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void squared_deviations_rows_impl(const scalar_t* __restrict__ x,
                                                    int64_t rows, int64_t stride,
                                                    int64_t channels,
                                                    const acc_t* __restrict__ mean,
                                                    acc_t* __restrict__ m2) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + r * stride;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t d = static_cast<acc_t>(xr[c]) - mean[c];
      m2[c] += d * d;
    }
  }
}

#define PWLU_DEFINE_CLONED_LOOPS(scalar_t, acc_t)                                              \
  PWLU_CPU_CLONES acc_t relu_sum(const scalar_t* x, scalar_t* y, int64_t len) {               \
    return relu_sum_impl<scalar_t, acc_t>(x, y, len);                                          \
  }                                                                                            \
  PWLU_CPU_CLONES acc_t squared_deviations(const scalar_t* x, int64_t len, acc_t mean) {      \
    return squared_deviations_impl<scalar_t, acc_t>(x, len, mean);                             \
  }                                                                                            \
  PWLU_CPU_CLONES void relu_sum_rows(const scalar_t* x, scalar_t* y, int64_t rows,           \
                                     int64_t stride, int64_t channels, acc_t* sum) {           \
    relu_sum_rows_impl<scalar_t, acc_t>(x, y, rows, stride, channels, sum);                    \
  }                                                                                            \
  PWLU_CPU_CLONES void squared_deviations_rows(const scalar_t* x, int64_t rows,               \
                                               int64_t stride, int64_t channels,               \
                                               const acc_t* mean, acc_t* m2) {                 \
    squared_deviations_rows_impl<scalar_t, acc_t>(x, rows, stride, channels, mean, m2);        \
  }

PWLU_FOR_EACH_DTYPE(PWLU_DEFINE_CLONED_LOOPS)
#undef PWLU_DEFINE_CLONED_LOOPS

// The moments of a chunk of `count` elements from its mean and sum of squared deviations.
template <typename acc_t>
Moments chunk_moments(int64_t count, acc_t mean, acc_t m2) {
  return {static_cast<double>(count), static_cast<double>(mean), static_cast<double>(m2)};
}

// relu over a chunk and the chunk's moments: two passes while the chunk is in cache.
template <typename scalar_t, typename acc_t>
Moments relu_moments_chunk(const scalar_t* x, scalar_t* y, int64_t len) {
  const acc_t mean = relu_sum(x, y, len) / static_cast<acc_t>(len);
  return chunk_moments(len, mean, squared_deviations(x, len, mean));
}

// A plane (or any long stretch of one set), chunk by chunk.
template <typename scalar_t, typename acc_t>
Moments relu_moments_plane(const scalar_t* x, scalar_t* y, int64_t len) {
  Moments total;
  for (int64_t start = 0; start < len; start += kMomentsChunk) {
    total = combine_moments(
        total, relu_moments_chunk<scalar_t, acc_t>(x + start, y + start,
                                                    std::min(kMomentsChunk, len - start)));
  }
  return total;
}

// Planes of one channel shorter than a chunk (RoI maps: 7 x 7 or 14 x 14), plane o at
// o * stride, in chunks of whole planes of at most kMomentsChunk elements: the planes' sums,
// then their squared deviations from the chunk's mean, and one combination per chunk rather than
// per plane, whose cost would rival that of the planes' few elements.
template <typename scalar_t, typename acc_t>
Moments relu_moments_short_planes(const scalar_t* x, scalar_t* y, int64_t count, int64_t stride,
                                  int64_t len) {
  const int64_t per_chunk = kMomentsChunk / len;
  Moments total;
  for (int64_t first = 0; first < count; first += per_chunk) {
    const int64_t last = std::min(count, first + per_chunk);
    acc_t sum = 0;
    for (int64_t o = first; o < last; ++o) sum += relu_sum(x + o * stride, y + o * stride, len);
    const int64_t n = (last - first) * len;
    const acc_t mean = sum / static_cast<acc_t>(n);
    acc_t m2 = 0;
    for (int64_t o = first; o < last; ++o) m2 += squared_deviations(x + o * stride, len, mean);
    total = combine_moments(total, chunk_moments(n, mean, m2));
  }
  return total;
}

// Per-channel moments of planes (inner > 1): one task per channel, its planes in order.
template <typename scalar_t, typename acc_t>
std::vector<Moments> relu_moments_planes(const scalar_t* x, scalar_t* y, const PwluLayout& layout) {
  const int64_t channels = layout.channels;
  std::vector<Moments> out(channels);
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (layout.inner < kMomentsChunk) {
        const int64_t first = c * layout.inner;
        out[c] = relu_moments_short_planes<scalar_t, acc_t>(
            x + first, y + first, layout.outer, channels * layout.inner, layout.inner);
        continue;
      }
      for (int64_t o = 0; o < layout.outer; ++o) {
        const int64_t base = (o * channels + c) * layout.inner;
        out[c] = combine_moments(
            out[c], relu_moments_plane<scalar_t, acc_t>(x + base, y + base, layout.inner));
      }
    }
  });
  return out;
}

// The moments of the whole tensor: the tensor as one plane, in blocks combined in block order.
template <typename scalar_t, typename acc_t>
std::vector<Moments> relu_moments_tensor(const scalar_t* x, scalar_t* y, const PwluLayout& layout) {
  const int64_t numel = layout.numel();
  const int64_t per_block = kMomentsBlockElements;
  const int64_t num_blocks = (numel + per_block - 1) / per_block;
  std::vector<Moments> block_moments(num_blocks);
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * per_block;
      block_moments[b] = relu_moments_plane<scalar_t, acc_t>(x + first, y + first,
                                                              std::min(per_block, numel - first));
    }
  });
  std::vector<Moments> out(1);
  for (const Moments& m : block_moments) out[0] = combine_moments(out[0], m);
  return out;
}

// Per-channel moments of interleaved rows (inner == 1). Tasks own groups of kRowGroup channels
// (as the pwlu kernels' tasks) over a block of rows: per channel and sub-block of rows, the sum,
// then the squared deviations from the sub-block's mean (two passes while it is in cache),
// combined in order. Blocks (a count that depends on the shape only) are combined in block
// order.
template <typename scalar_t, typename acc_t>
std::vector<Moments> relu_moments_rows(const scalar_t* x, scalar_t* y, const PwluLayout& layout) {
  using cpu::kRowGroup;
  const int64_t channels = layout.channels;
  const int64_t rows = layout.outer;
  const int64_t groups = (channels + kRowGroup - 1) / kRowGroup;
  const int64_t num_blocks = std::max<int64_t>(
      1, std::min<int64_t>(layout.numel() / kMomentsRowBlockElements, rows));
  const int64_t rows_per_block = (rows + num_blocks - 1) / num_blocks;
  std::vector<Moments> block_moments(num_blocks * channels);
  at::parallel_for(0, num_blocks * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> mean(kRowGroup), m2(kRowGroup);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups;
      const int64_t c0 = (task % groups) * kRowGroup;
      const int64_t count = std::min(kRowGroup, channels - c0);
      const int64_t first = b * rows_per_block;
      const int64_t last = std::min(rows, first + rows_per_block);
      if (first >= last) continue;
      // Sub-blocks of about kMomentsBlockElements elements keep the second pass in cache.
      const int64_t sub_rows = std::max<int64_t>(1, kMomentsBlockElements / count);
      Moments* mine = block_moments.data() + b * channels + c0;
      for (int64_t sub = first; sub < last; sub += sub_rows) {
        const int64_t n_rows = std::min(sub_rows, last - sub);
        const int64_t base = sub * channels + c0;
        std::fill(mean.begin(), mean.end(), acc_t(0));
        std::fill(m2.begin(), m2.end(), acc_t(0));
        relu_sum_rows(x + base, y + base, n_rows, channels, count, mean.data());
        const acc_t n = static_cast<acc_t>(n_rows);
        for (int64_t c = 0; c < count; ++c) mean[c] /= n;
        squared_deviations_rows(x + base, n_rows, channels, count, mean.data(), m2.data());
        for (int64_t c = 0; c < count; ++c) {
          mine[c] = combine_moments(mine[c], chunk_moments(n_rows, mean[c], m2[c]));
        }
      }
    }
  });
  if (num_blocks == 1) return block_moments;
  std::vector<Moments> out(channels);
  for (int64_t b = 0; b < num_blocks; ++b) {
    for (int64_t c = 0; c < channels; ++c) {
      out[c] = combine_moments(out[c], block_moments[b * channels + c]);
    }
  }
  return out;
}

// Moments of every set; sets = C (per channel) or 1.
template <typename scalar_t, typename acc_t>
std::vector<Moments> relu_moments_kernel(const scalar_t* x, scalar_t* y, const PwluLayout& layout,
                                         bool per_channel) {
  if (!per_channel) return relu_moments_tensor<scalar_t, acc_t>(x, y, layout);
  if (layout.inner > 1) return relu_moments_planes<scalar_t, acc_t>(x, y, layout);
  return relu_moments_rows<scalar_t, acc_t>(x, y, layout);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_with_moments_cpu(const at::Tensor& x,
                                                                     bool per_channel) {
  check_relu_with_moments_args(x);
  const at::MemoryFormat format = output_memory_format(x);
  const at::Tensor xc = x.contiguous(format);
  at::Tensor y = at::empty_like(xc, xc.options(), format);
  const int64_t sets = per_channel ? x.size(1) : 1;
  const auto stat_options = x.options().dtype(compute_type(x));
  at::Tensor mean = at::zeros({sets}, stat_options);
  at::Tensor var = at::zeros({sets}, stat_options);
  if (x.numel() == 0) return {y, mean, var};
  const PwluLayout layout = make_layout(xc, format);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "relu_with_moments_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const std::vector<Moments> moments = relu_moments_kernel<scalar_t, acc_t>(
            xc.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), layout, per_channel);
        acc_t* mp = mean.data_ptr<acc_t>();
        acc_t* vp = var.data_ptr<acc_t>();
        for (int64_t s = 0; s < sets; ++s) {
          mp[s] = static_cast<acc_t>(moments[s].mean);
          vp[s] = static_cast<acc_t>(moments[s].m2 / moments[s].count);
        }
      });
  return {y, mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CPU, m) {
  m.impl("relu_with_moments", &relu_with_moments_cpu);
}

}  // namespace ops
}  // namespace pwlu_mmdet
