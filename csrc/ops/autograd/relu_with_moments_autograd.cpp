// Autograd kernel of pwlu_mmdet::relu_with_moments (the torchvision csrc/ops/autograd pattern),
// in C++ for the same reason as autograd/pwlu_autograd.cpp: the Python path's per-call overhead.
// Only y is differentiable; its gradient is ReLU's.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace pwlu_mmdet {
namespace ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_with_moments_op(const at::Tensor& x,
                                                                    bool per_channel) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pwlu_mmdet::relu_with_moments", "")
                             .typed<decltype(relu_with_moments_op)>();
  return op.call(x, per_channel);
}

class ReluWithMomentsFunction : public torch::autograd::Function<ReluWithMomentsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, bool per_channel) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = relu_with_moments_op(x, per_channel);
    // The statistics are bookkeeping, not part of the model: only y is differentiable.
    ctx->mark_non_differentiable({std::get<1>(out), std::get<2>(out)});
    ctx->save_for_backward({std::get<0>(out)});
    return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor y = ctx->get_saved_variables()[0];
    return {at::threshold_backward(grad_outputs[0], y, 0), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_with_moments_autograd(const at::Tensor& x,
                                                                          bool per_channel) {
  const variable_list out = ReluWithMomentsFunction::apply(x, per_channel);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, Autograd, m) {
  m.impl("relu_with_moments", &relu_with_moments_autograd);
}

}  // namespace ops
}  // namespace pwlu_mmdet
