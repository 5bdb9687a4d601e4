// Host-side parts of a pwlu call shared by the CPU and CUDA backends: argument checks, memory
// layout, parameter preparation and the packing of parameter gradients.
// Messages match pwlu_mmdet/ops/_checks.py so both implementations fail alike.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

#include "pwlu_element.h"

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

inline void check_range_eps(double range_eps) {
  TORCH_CHECK_VALUE(range_eps >= 0 && std::isfinite(range_eps),
                    "pwlu: range_eps must be a finite number >= 0, got ", range_eps);
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
  double range_eps;  // make_range's guard of B_R; 0: none

  template <typename acc_t>
  PwluRange<acc_t> range(acc_t left, acc_t right) const {
    return make_range<acc_t>(left, right, static_cast<int>(num_intervals),
                             static_cast<acc_t>(range_eps));
  }
};

inline PwluParams make_params(const at::Tensor& points, const at::Tensor& left_bound,
                              const at::Tensor& right_bound, const at::Tensor& left_slope,
                              const at::Tensor& right_slope, double range_eps,
                              at::ScalarType acc_type) {
  // Parameters normally arrive in the compute type and contiguous: skip the dispatcher calls,
  // whose fixed cost small inputs notice.
  auto prep = [acc_type](const at::Tensor& t) {
    return t.scalar_type() == acc_type && t.is_contiguous() ? t : t.to(acc_type).contiguous();
  };
  return {prep(points),      prep(left_bound), prep(right_bound),  prep(left_slope),
          prep(right_slope), points.size(0),   points.size(1) - 1, range_eps};
}

// float for float16 / bfloat16 / float32, double for double: the kernels' arithmetic type.
inline at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A checked pwlu call, ready for a backend: x in the output's memory format, its
// (outer, C, inner) view and the parameters in the compute type.
struct PwluCall {
  at::MemoryFormat format;
  at::Tensor x;
  PwluLayout layout;
  PwluParams params;
};

inline PwluCall prepare_call(const at::Tensor& x, const at::Tensor& points,
                             const at::Tensor& left_bound, const at::Tensor& right_bound,
                             const at::Tensor& left_slope, const at::Tensor& right_slope,
                             double range_eps) {
  check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope);
  check_range_eps(range_eps);
  const at::MemoryFormat format = output_memory_format(x);
  const at::Tensor xc = x.contiguous(format);
  return {format, xc, make_layout(xc, format),
          make_params(points, left_bound, right_bound, left_slope, right_slope, range_eps,
                      compute_type(x))};
}

// The backward's call: grad_output in x's dtype and layout, and the outputs. grad_x is empty
// (shape (0,)) unless input_grad; the parameter gradients, in the compute type, are undefined
// unless param_grads (zeros for an empty x; otherwise the kernels write every value).
struct PwluBackwardCall : PwluCall {
  at::Tensor grad_output;
  at::Tensor grad_x;
  at::Tensor grad_points, grad_left_bound, grad_right_bound, grad_left_slope, grad_right_slope;

  template <typename acc_t>
  ParamGradOut<acc_t> param_grad_out() const {
    return {grad_points.data_ptr<acc_t>(), grad_left_bound.data_ptr<acc_t>(),
            grad_right_bound.data_ptr<acc_t>(), grad_left_slope.data_ptr<acc_t>(),
            grad_right_slope.data_ptr<acc_t>()};
  }
};

inline PwluBackwardCall prepare_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                         const at::Tensor& points, const at::Tensor& left_bound,
                                         const at::Tensor& right_bound,
                                         const at::Tensor& left_slope,
                                         const at::Tensor& right_slope, double range_eps,
                                         bool input_grad, bool param_grads) {
  PwluBackwardCall call;
  static_cast<PwluCall&>(call) =
      prepare_call(x, points, left_bound, right_bound, left_slope, right_slope, range_eps);
  TORCH_CHECK_VALUE(grad_output.sizes() == x.sizes(), "pwlu_backward: grad_output has shape ",
                    grad_output.sizes(), " but x has ", x.sizes());
  TORCH_CHECK_VALUE(grad_output.device() == x.device(), "pwlu_backward: grad_output is on ",
                    grad_output.device(), " but x is on ", x.device());
  call.grad_output = grad_output.to(x.scalar_type()).contiguous(call.format);
  call.grad_x = input_grad ? at::empty_like(call.x, call.x.options(), call.format)
                           : at::empty({0}, x.options());
  if (param_grads) {
    const int64_t sets = points.size(0);
    const at::TensorOptions options = x.options().dtype(compute_type(x));
    auto make = [&](at::IntArrayRef shape) {
      return x.numel() == 0 ? at::zeros(shape, options) : at::empty(shape, options);
    };
    call.grad_points = make({sets, points.size(1)});
    call.grad_left_bound = make({sets});
    call.grad_right_bound = make({sets});
    call.grad_left_slope = make({sets});
    call.grad_right_slope = make({sets});
  }
  return call;
}

using PwluGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor>;

// (grad_x, grad_points, grad_B_L, grad_B_R, grad_K_L, grad_K_R) in the parameters' dtype; the
// parameter gradients are empty tensors of shape (0,) when they were not asked for.
inline PwluGrads pack_grads(const PwluBackwardCall& call, const at::Tensor& points) {
  if (!call.grad_points.defined()) {
    const at::Tensor none = at::empty({0}, points.options());
    return {call.grad_x, none, none, none, none, none};
  }
  const auto dtype = points.scalar_type();
  return {call.grad_x,
          call.grad_points.to(dtype),
          call.grad_left_bound.to(dtype),
          call.grad_right_bound.to(dtype),
          call.grad_left_slope.to(dtype),
          call.grad_right_slope.to(dtype)};
}

}  // namespace ops
}  // namespace pwlu_mmdet
