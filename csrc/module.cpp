// Makes the extension importable as pwlu_mmdet._C; importing it runs the static TORCH_LIBRARY
// registrations of the operators (the pattern of pytorch/extension-cpp).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "Compiled PWLU operators (registered under torch.ops.pwlu_mmdet)",
      -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  // Whether this build has the CUDA kernels (cuda/) or only no_cuda.cpp's explanation.
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
