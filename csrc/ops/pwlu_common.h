// Host-side pieces of a pwlu call shared by the CPU and CUDA backends: argument checks, memory
// layout, parameter preparation and the packing of parameter gradients.
// Messages match pwlu_mmdet/ops/_checks.py so both implementations fail alike.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pwlu_mmdet {
namespace ops {

// Checks the arguments and returns K, the number of intervals.
inline int64_t check_pwlu_args(const at::Tensor& x, const at::Tensor& points,
                               const at::Tensor& left_bound, const at::Tensor& right_bound,
                               const at::Tensor& left_slope, const at::Tensor& right_slope) {
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"x", &x},
      {"points", &points},
      {"left_bound", &left_bound},
      {"right_bound", &right_bound},
      {"left_slope", &left_slope},
      {"right_slope", &right_slope}};
  for (const auto& named : all) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "pwlu: ", named.first,
                     " must be a floating-point tensor, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == x.device(), "pwlu: ", named.first, " is on ", t.device(),
                " but x is on ", x.device(), "; all tensors must be on the same device");
  }
  TORCH_CHECK_VALUE(x.dim() >= 2, "pwlu: x must have shape (N, C) or (N, C, *spatial), got ",
              x.sizes());
  TORCH_CHECK_VALUE(points.dim() == 2, "pwlu: points must have shape (C, K+1) or (1, K+1), got ",
              points.sizes());
  const int64_t num_sets = points.size(0);
  TORCH_CHECK_VALUE(points.size(1) >= 2,
              "pwlu: points must have at least 2 columns (K >= 1 intervals), got ",
              points.sizes());
  TORCH_CHECK_VALUE(num_sets == 1 || num_sets == x.size(1), "pwlu: points has ", num_sets,
              " rows but x has ", x.size(1),
              " channels; expected (C, K+1) channel-wise or (1, K+1) layer-wise");
  for (size_t i = 2; i < 6; ++i) {
    const at::Tensor& t = *all[i].second;
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == num_sets, "pwlu: ", all[i].first,
                " must have shape (", num_sets, ",) to match points ", points.sizes(), ", got ",
                t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == points.scalar_type(), "pwlu: ", all[i].first,
                     " has dtype ", t.scalar_type(), " but points has ", points.scalar_type(),
                     "; all parameters must share one dtype");
  }
  return points.size(1) - 1;
}

// Checks the input of relu_with_moments.
inline void check_relu_with_moments_args(const at::Tensor& x) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "relu_with_moments: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2,
                    "relu_with_moments: x must have shape (N, C) or (N, C, *spatial), got ",
                    x.sizes());
}

// The memory format the output keeps: channels-last if x is, else contiguous (as the reference).
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() &&
      x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  if (x.dim() == 5 && !x.is_contiguous() &&
      x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    return at::MemoryFormat::ChannelsLast3d;
  }
  return at::MemoryFormat::Contiguous;
}

// x viewed as (outer, channels, inner) in memory order: (N, C, prod(spatial)) when contiguous,
// (N * prod(spatial), C, 1) when channels-last.
struct PwluLayout {
  int64_t outer;
  int64_t channels;
  int64_t inner;
  int64_t numel() const { return outer * channels * inner; }
};

inline PwluLayout make_layout(const at::Tensor& x, at::MemoryFormat format) {
  const int64_t channels = x.size(1);
  const int64_t spatial = x.numel() == 0 ? 0 : x.numel() / (x.size(0) * channels);
  if (format == at::MemoryFormat::Contiguous) {
    return {x.size(0), channels, spatial};
  }
  return {x.size(0) * spatial, channels, 1};
}

// Parameters converted once to the compute type, contiguous, for the kernels.
struct PwluParams {
  at::Tensor points, left_bound, right_bound, left_slope, right_slope;
  int64_t num_sets;
  int64_t num_intervals;
};

inline PwluParams make_params(const at::Tensor& points, const at::Tensor& left_bound,
                              const at::Tensor& right_bound, const at::Tensor& left_slope,
                              const at::Tensor& right_slope, at::ScalarType acc_type) {
  auto prep = [acc_type](const at::Tensor& t) { return t.to(acc_type).contiguous(); };
  return {prep(points),     prep(left_bound),  prep(right_bound), prep(left_slope),
          prep(right_slope), points.size(0),   points.size(1) - 1};
}

// float for float16 / bfloat16 / float32, double for double: the kernels' arithmetic type.
inline at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

using PwluGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor>;

// (grad_x, grad_points, grad_B_L, grad_B_R, grad_K_L, grad_K_R) from grad_x and the per-set
// accumulators [Y_0..Y_N, B_L, B_R, K_L, K_R] (undefined when parameter grads were not asked
// for: those come back as empty tensors of shape (0,)).
inline PwluGrads pack_grads(const at::Tensor& grad_x, const at::Tensor& set_acc,
                            const at::Tensor& points) {
  if (!set_acc.defined()) {
    const at::Tensor none = at::empty({0}, points.options());
    return {grad_x, none, none, none, none, none};
  }
  const int64_t n = points.size(1) - 1;
  const at::Tensor grads = set_acc.to(points.scalar_type());
  return {grad_x,
          grads.narrow(1, 0, n + 1).contiguous(),
          grads.select(1, n + 1).contiguous(),
          grads.select(1, n + 2).contiguous(),
          grads.select(1, n + 3).contiguous(),
          grads.select(1, n + 4).contiguous()};
}

}  // namespace ops
}  // namespace pwlu_mmdet
