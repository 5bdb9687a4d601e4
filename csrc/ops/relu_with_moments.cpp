// Schema of pwlu_mmdet::relu_with_moments. Kernels: cpu/relu_with_moments_kernel.cpp,
// cuda/relu_with_moments_kernel.cu, autograd/relu_with_moments_autograd.cpp; the fake (meta)
// kernel is registered in Python (pwlu_mmdet/ops/_op.py). pwlu.cpp defines the namespace.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pwlu_mmdet, m) {
  // Phase I of the PWLU layer in one pass: y = relu(x) plus the mean and the (population)
  // variance of x per channel (per_channel) or over the whole tensor, in float32 (float64 for
  // float64 x). Zeros for an empty x.
  m.def("relu_with_moments(Tensor x, bool per_channel) -> (Tensor, Tensor, Tensor)");
}
