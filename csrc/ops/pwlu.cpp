// Schemas of pwlu_mmdet::pwlu, pwlu_ and pwlu_backward. Kernels: cpu/pwlu_kernel.cpp,
// cuda/pwlu_kernel.cu, autograd/pwlu_autograd.cpp; the fake (meta) kernels are registered in
// Python (pwlu_mmdet/ops/_op.py). relu_with_moments.cpp adds the namespace's other op.
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
}
