// Autograd kernels of pwlu_mmdet::pwlu and pwlu_mmdet::pwlu_ (the torchvision csrc/ops/autograd
// pattern). They live in C++ rather than in torch.library.register_autograd because the Python
// path's overhead per forward + backward exceeds the kernels' own time on the small inputs of the
// RoI heads' fc and mask layers. The fake (meta) kernels stay in Python
// (pwlu_mmdet/ops/_op.py); torch.compile traces through these.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

namespace pwlu_mmdet {
namespace ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor pwlu_op(const at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                   const at::Tensor& right_bound, const at::Tensor& left_slope,
                   const at::Tensor& right_slope, double range_eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pwlu_mmdet::pwlu", "")
                             .typed<decltype(pwlu_op)>();
  return op.call(x, points, left_bound, right_bound, left_slope, right_slope, range_eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
pwlu_backward_op(const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& points,
                 const at::Tensor& left_bound, const at::Tensor& right_bound,
                 const at::Tensor& left_slope, const at::Tensor& right_slope, double range_eps,
                 bool input_grad, bool param_grads) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pwlu_mmdet::pwlu_backward", "")
                             .typed<decltype(pwlu_backward_op)>();
  return op.call(grad_output, x, points, left_bound, right_bound, left_slope, right_slope,
                 range_eps, input_grad, param_grads);
}

void pwlu_inplace_op(at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                     const at::Tensor& right_bound, const at::Tensor& left_slope,
                     const at::Tensor& right_slope, double range_eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pwlu_mmdet::pwlu_", "")
                             .typed<decltype(pwlu_inplace_op)>();
  op.call(x, points, left_bound, right_bound, left_slope, right_slope, range_eps);
}

class PwluFunction : public torch::autograd::Function<PwluFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& points,
                            const at::Tensor& left_bound, const at::Tensor& right_bound,
                            const at::Tensor& left_slope, const at::Tensor& right_slope,
                            double range_eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, points, left_bound, right_bound, left_slope, right_slope});
    ctx->saved_data["range_eps"] = range_eps;
    return pwlu_op(x, points, left_bound, right_bound, left_slope, right_slope, range_eps);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const bool input_grad = ctx->needs_input_grad(0);
    bool param_grads = false;
    for (size_t i = 1; i < saved.size(); ++i) param_grads |= ctx->needs_input_grad(i);
    // Phase I (frozen parameters) skips the parameter-gradient reductions altogether.
    auto grads = pwlu_backward_op(grad_outputs[0], saved[0], saved[1], saved[2], saved[3],
                                  saved[4], saved[5], ctx->saved_data["range_eps"].toDouble(),
                                  input_grad, param_grads);
    variable_list out = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                         std::get<3>(grads), std::get<4>(grads), std::get<5>(grads)};
    for (size_t i = 0; i < out.size(); ++i) {
      if (!ctx->needs_input_grad(i)) out[i] = at::Tensor();
    }
    out.emplace_back();  // range_eps
    return out;
  }
};

at::Tensor pwlu_autograd(const at::Tensor& x, const at::Tensor& points,
                         const at::Tensor& left_bound, const at::Tensor& right_bound,
                         const at::Tensor& left_slope, const at::Tensor& right_slope,
                         double range_eps) {
  return PwluFunction::apply(x, points, left_bound, right_bound, left_slope, right_slope,
                             range_eps);
}

// pwlu_ has no backward: it is for inference. Refused where autograd would need one; otherwise
// it runs below autograd and bumps x's version, as in-place ATen ops do.
void pwlu_inplace_autograd(at::Tensor& x, const at::Tensor& points,
                           const at::Tensor& left_bound, const at::Tensor& right_bound,
                           const at::Tensor& left_slope, const at::Tensor& right_slope,
                           double range_eps) {
  const bool needs_grad =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || points.requires_grad() || left_bound.requires_grad() ||
       right_bound.requires_grad() || left_slope.requires_grad() || right_slope.requires_grad());
  TORCH_CHECK(!needs_grad,
              "pwlu_: the in-place PWLU has no backward; use pwlu, or call it under "
              "torch.no_grad() / torch.inference_mode()");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    pwlu_inplace_op(x, points, left_bound, right_bound, left_slope, right_slope, range_eps);
  }
  torch::autograd::increment_version(x);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, Autograd, m) {
  m.impl("pwlu", &pwlu_autograd);
  m.impl("pwlu_", &pwlu_inplace_autograd);
}

}  // namespace ops
}  // namespace pwlu_mmdet
