// CPU kernels of pwlu_mmdet::pwlu and pwlu_mmdet::pwlu_backward.
//
// x is viewed as (outer, C, inner) in memory order (pwlu_common.h). With inner > 1 (contiguous
// NC*) every run of `inner` elements shares one channel; with inner == 1 (channels-last, or 2-D
// input) channels interleave and each row of C elements walks the whole table set.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../pwlu_common.h"
#include "../pwlu_element.h"

namespace pwlu_mmdet {
namespace ops {

namespace {

// Per-set ranges and (slope, intercept) tables of N + 2 entries, in the compute type.
template <typename acc_t>
struct CpuTables {
  std::vector<PwluRange<acc_t>> ranges;
  std::vector<acc_t> slopes;
  std::vector<acc_t> intercepts;
  int entries;  // N + 2

  CpuTables(const PwluParams& p) : entries(static_cast<int>(p.num_intervals) + 2) {
    const int n = static_cast<int>(p.num_intervals);
    const acc_t* points = p.points.data_ptr<acc_t>();
    const acc_t* lb = p.left_bound.data_ptr<acc_t>();
    const acc_t* rb = p.right_bound.data_ptr<acc_t>();
    const acc_t* ls = p.left_slope.data_ptr<acc_t>();
    const acc_t* rs = p.right_slope.data_ptr<acc_t>();
    ranges.resize(p.num_sets);
    slopes.resize(p.num_sets * entries);
    intercepts.resize(p.num_sets * entries);
    for (int64_t s = 0; s < p.num_sets; ++s) {
      ranges[s] = make_range<acc_t>(lb[s], rb[s], n);
      for (int j = 0; j < entries; ++j) {
        table_pair<acc_t, acc_t>(points + s * (n + 1), ranges[s], ls[s], rs[s], j,
                                 &slopes[s * entries + j], &intercepts[s * entries + j]);
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const PwluLayout& layout,
                    const CpuTables<acc_t>& tab) {
  const int n = tab.entries - 2;
  const bool shared = tab.ranges.size() == 1;
  // One element of set s: t, table entry, multiply-add.
  auto element = [&](int64_t s, scalar_t xv) -> scalar_t {
    const acc_t xa = static_cast<acc_t>(xv);
    const PwluRange<acc_t>& r = tab.ranges[s];
    const int j = table_entry(interval_coordinate(xa, r), n);
    return static_cast<scalar_t>(
        apply_piece(xa, tab.slopes[s * tab.entries + j], tab.intercepts[s * tab.entries + j]));
  };
  if (layout.inner > 1) {
    const int64_t planes = layout.outer * layout.channels;
    at::parallel_for(0, planes, std::max<int64_t>(1, 32768 / layout.inner),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const int64_t s = shared ? 0 : plane % layout.channels;
                         const int64_t base = plane * layout.inner;
                         for (int64_t k = 0; k < layout.inner; ++k) {
                           y[base + k] = element(s, x[base + k]);
                         }
                       }
                     });
  } else {
    at::parallel_for(0, layout.outer, std::max<int64_t>(1, 32768 / layout.channels),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t row = begin; row < end; ++row) {
                         const int64_t base = row * layout.channels;
                         for (int64_t c = 0; c < layout.channels; ++c) {
                           y[base + c] = element(shared ? 0 : c, x[base + c]);
                         }
                       }
                     });
  }
}

// Backward. grad_x (may be null) gets g * S_j. When param_acc is given, each channel c's
// parameter gradient is summed into param_acc[c * W .. c * W + W) (W = N + 5), in a fixed order
// independent of the thread count, so results are reproducible bit for bit.
template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_x,
                     acc_t* param_acc, const PwluLayout& layout, const CpuTables<acc_t>& tab) {
  const int n = tab.entries - 2;
  const int width = param_grad_width(n);
  const bool shared = tab.ranges.size() == 1;
  // Processes one element of set s; adds its parameter gradient to acc when acc is not null.
  auto element = [&](int64_t s, int64_t i, acc_t* acc) {
    const acc_t xa = static_cast<acc_t>(x[i]);
    const acc_t g = static_cast<acc_t>(grad_out[i]);
    const PwluRange<acc_t>& r = tab.ranges[s];
    const acc_t t = interval_coordinate(xa, r);
    const int j = table_entry(t, n);
    const acc_t slope = tab.slopes[s * tab.entries + j];
    if (grad_x) grad_x[i] = static_cast<scalar_t>(g * slope);
    if (acc) accumulate_param_grad(acc, element_param_grad(g, xa, t, j, slope, r), n);
  };

  if (layout.inner > 1) {
    // Parallel over channels; within a channel, plane sums are added in plane order.
    at::parallel_for(0, layout.channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane_acc(width);
      for (int64_t c = begin; c < end; ++c) {
        const int64_t s = shared ? 0 : c;
        acc_t* channel_acc = param_acc ? param_acc + c * width : nullptr;
        for (int64_t o = 0; o < layout.outer; ++o) {
          const int64_t base = (o * layout.channels + c) * layout.inner;
          std::fill(plane_acc.begin(), plane_acc.end(), acc_t(0));
          acc_t* acc = channel_acc ? plane_acc.data() : nullptr;
          for (int64_t k = 0; k < layout.inner; ++k) element(s, base + k, acc);
          if (channel_acc) {
            for (int w = 0; w < width; ++w) channel_acc[w] += plane_acc[w];
          }
        }
      }
    });
    return;
  }

  // Interleaved channels: rows are cut into a fixed number of blocks (a function of the shape
  // only), each summing into its own accumulators; blocks are then added in block order.
  const int64_t rows = layout.outer;
  const int64_t channels = layout.channels;
  if (!param_acc) {
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / channels),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t row = begin; row < end; ++row) {
                         for (int64_t c = 0; c < channels; ++c) {
                           element(shared ? 0 : c, row * channels + c, nullptr);
                         }
                       }
                     });
    return;
  }
  const int64_t target_blocks = std::max<int64_t>(1, rows * channels / 65536);
  const int64_t num_blocks = std::min<int64_t>({target_blocks, 64, rows});
  const int64_t rows_per_block = (rows + num_blocks - 1) / num_blocks;
  std::vector<acc_t> block_acc(num_blocks * channels * width, acc_t(0));
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* acc = block_acc.data() + b * channels * width;
      const int64_t row_end = std::min(rows, (b + 1) * rows_per_block);
      for (int64_t row = b * rows_per_block; row < row_end; ++row) {
        for (int64_t c = 0; c < channels; ++c) {
          element(shared ? 0 : c, row * channels + c, acc + c * width);
        }
      }
    }
  });
  for (int64_t b = 0; b < num_blocks; ++b) {
    const acc_t* acc = block_acc.data() + b * channels * width;
    for (int64_t k = 0; k < channels * width; ++k) param_acc[k] += acc[k];
  }
}

at::Tensor pwlu_forward_cpu(const at::Tensor& x, const at::Tensor& points,
                            const at::Tensor& left_bound, const at::Tensor& right_bound,
                            const at::Tensor& left_slope, const at::Tensor& right_slope) {
  check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope);
  const at::MemoryFormat format = output_memory_format(x);
  const at::Tensor xc = x.contiguous(format);
  at::Tensor y = at::empty_like(xc, xc.options(), format);
  if (x.numel() == 0) return y;
  const PwluLayout layout = make_layout(xc, format);
  const PwluParams params =
      make_params(points, left_bound, right_bound, left_slope, right_slope, compute_type(x));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    CpuTables<acc_t> tables(params);
                                    forward_kernel<scalar_t, acc_t>(xc.const_data_ptr<scalar_t>(),
                                                                    y.data_ptr<scalar_t>(), layout,
                                                                    tables);
                                  });
  return y;
}

PwluGrads pwlu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& points,
                  const at::Tensor& left_bound, const at::Tensor& right_bound,
                  const at::Tensor& left_slope, const at::Tensor& right_slope, bool input_grad,
                  bool param_grads) {
  check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope);
  TORCH_CHECK_VALUE(grad_output.sizes() == x.sizes(), "pwlu_backward: grad_output has shape ",
              grad_output.sizes(), " but x has ", x.sizes());
  const at::MemoryFormat format = output_memory_format(x);
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor gc = grad_output.to(x.scalar_type()).contiguous(format);
  const int64_t n = points.size(1) - 1;
  const int64_t width = param_grad_width(static_cast<int>(n));
  const at::ScalarType acc_type = compute_type(x);

  at::Tensor grad_x = input_grad ? at::empty_like(xc, xc.options(), format)
                                 : at::empty({0}, x.options());
  // Per-channel accumulators [Y_0..Y_N, B_L, B_R, K_L, K_R], summed over sets below.
  at::Tensor channel_acc = param_grads ? at::zeros({x.size(1), width}, x.options().dtype(acc_type))
                                       : at::Tensor();
  if (x.numel() > 0 && (input_grad || param_grads)) {
    const PwluLayout layout = make_layout(xc, format);
    const PwluParams params =
        make_params(points, left_bound, right_bound, left_slope, right_slope, acc_type);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          CpuTables<acc_t> tables(params);
          backward_kernel<scalar_t, acc_t>(
              gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
              input_grad ? grad_x.data_ptr<scalar_t>() : nullptr,
              param_grads ? channel_acc.data_ptr<acc_t>() : nullptr, layout, tables);
        });
  }
  if (!param_grads) return pack_grads(grad_x, at::Tensor(), points);
  // Layer-wise: the one set shared by all channels receives the sum over channels.
  return pack_grads(grad_x,
                    points.size(0) == 1 ? channel_acc.sum(0, /*keepdim=*/true) : channel_acc,
                    points);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CPU, m) {
  m.impl("pwlu", &pwlu_forward_cpu);
  m.impl("pwlu_backward", &pwlu_backward_cpu);
}

}  // namespace ops
}  // namespace pwlu_mmdet
