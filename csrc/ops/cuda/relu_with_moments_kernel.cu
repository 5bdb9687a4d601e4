// CUDA kernel of pwlu_mmdet::relu_with_moments (PWLU's phase I), composed of ATen kernels: ReLU,
// then one var_mean reduction in the compute type. Unlike the CPU kernel it reads x twice.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../pwlu_common.h"

namespace pwlu_mmdet {
namespace ops {

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_with_moments_cuda(const at::Tensor& x,
                                                                      bool per_channel) {
  check_relu_with_moments_args(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat format = output_memory_format(x);
  at::Tensor y = at::relu(x.contiguous(format));
  const int64_t sets = per_channel ? x.size(1) : 1;
  const auto stat_options = x.options().dtype(compute_type(x));
  if (x.numel() == 0) {
    return {y, at::zeros({sets}, stat_options), at::zeros({sets}, stat_options)};
  }
  const at::Tensor xf = x.to(compute_type(x));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (!per_channel || d != 1) dims.push_back(d);
  }
  auto [var, mean] = at::var_mean(xf, dims, /*correction=*/0, /*keepdim=*/false);
  return {y, mean.reshape({sets}), var.reshape({sets})};
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CUDA, m) {
  m.impl("relu_with_moments", &relu_with_moments_cuda);
}

}  // namespace ops
}  // namespace pwlu_mmdet
