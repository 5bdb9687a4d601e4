// Makes the extension importable as pwlu_mmdet._C; importing it runs the static TORCH_LIBRARY
// registrations of the operators (the pattern of pytorch/extension-cpp).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "Compiled PWLU operators (registered under torch.ops.pwlu_mmdet)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}
