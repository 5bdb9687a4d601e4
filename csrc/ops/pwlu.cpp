// Schemas of the pwlu_mmdet operators. Kernels: cpu/pwlu_kernel.cpp, cuda/pwlu_kernel.cu,
// autograd/pwlu_autograd.cpp; the fake (meta) kernels are registered in Python
// (pwlu_mmdet/ops/_op.py).
#include <torch/library.h>

TORCH_LIBRARY(pwlu_mmdet, m) {
  // range_eps > 0: the op guards B_R against a collapsed or flipped range (make_range in
  // pwlu_element.h), as the PWLU layer needs while training; 0 uses B_R as given.
  m.def(
      "pwlu(Tensor x, Tensor points, Tensor left_bound, Tensor right_bound, "
      "Tensor left_slope, Tensor right_slope, float range_eps=0.) -> Tensor");
  // In place, for inference (no backward): x becomes pwlu(x). Returns nothing, so that
  // torch.compile can functionalize it (custom ops may not return aliases of their inputs).
  m.def(
      "pwlu_(Tensor(a!) x, Tensor points, Tensor left_bound, Tensor right_bound, "
      "Tensor left_slope, Tensor right_slope, float range_eps=0.) -> ()");
  // Gradients w.r.t. (x, points, left_bound, right_bound, left_slope, right_slope). Those not
  // asked for come back as empty tensors of shape (0,): phase I skips the parameter reductions.
  m.def(
      "pwlu_backward(Tensor grad_output, Tensor x, Tensor points, Tensor left_bound, "
      "Tensor right_bound, Tensor left_slope, Tensor right_slope, float range_eps, "
      "bool input_grad, bool param_grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Phase I of the PWLU layer in one pass: y = relu(x) plus the mean and the (population)
  // variance of x per channel (per_channel) or over the whole tensor, in float32 (float64 for
  // float64 x). Zeros for an empty x.
  m.def("relu_with_moments(Tensor x, bool per_channel) -> (Tensor, Tensor, Tensor)");
}
