// CUDA kernels of a build without them: every pwlu_mmdet op called on CUDA tensors says how to
// rebuild, instead of the dispatcher's "Could not run ... with arguments from the 'CUDA'
// backend", which does not tell a user that the fix is a rebuild of this package.
#ifndef WITH_CUDA

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace pwlu_mmdet {
namespace ops {

namespace {

void no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack* /*stack*/) {
  TORCH_CHECK(false, op.schema().name(),
              ": pwlu_mmdet was built without its CUDA kernels (no CUDA toolkit or no CUDA "
              "build of torch at build time). Rebuild it against this torch with a CUDA "
              "toolkit: FORCE_CUDA=1 pip install --no-build-isolation -e . (set CUDA_HOME if "
              "nvcc is not found, TORCH_CUDA_ARCH_LIST to choose the GPU architectures)");
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CUDA, m) {
  for (const char* name : {"pwlu", "pwlu_", "pwlu_backward", "relu_with_moments"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernel>());
  }
}

}  // namespace ops
}  // namespace pwlu_mmdet

#endif  // WITH_CUDA
