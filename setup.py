"""Builds pwlu_mmdet and its compiled operators (pwlu_mmdet._C).

CPU kernels are always built. CUDA kernels are built when torch has CUDA and a CUDA toolkit is
found, or when FORCE_CUDA=1 (e.g. on a build machine without a GPU); TORCH_CUDA_ARCH_LIST selects
the architectures. Install with ``pip install --no-build-isolation -e .`` so that the extension
is compiled against the torch you already have.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda(torch, cuda_home) -> bool:
    if os.environ.get('FORCE_CUDA', '0') == '1':
        return True
    return torch.cuda.is_available() and cuda_home is not None


def get_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join('csrc')
    # ops/*.cpp: one schema file per op, and no_cuda.cpp (empty in a CUDA build; in a build
    # without the CUDA kernels it tells a caller with CUDA tensors how to get them).
    sources = [os.path.join(csrc, 'module.cpp')]
    sources += sorted(glob.glob(os.path.join(csrc, 'ops', '*.cpp')))
    sources += sorted(glob.glob(os.path.join(csrc, 'ops', 'autograd', '*.cpp')))
    sources += sorted(glob.glob(os.path.join(csrc, 'ops', 'cpu', '*.cpp')))
    cxx_flags = ['-O3', '-std=c++17']
    if os.environ.get('PWLU_NO_OPENMP', '0') != '1' and os.name != 'nt':
        cxx_flags.append('-fopenmp')
    extra_compile_args = {'cxx': cxx_flags}
    extra_link_args = ['-fopenmp'] if '-fopenmp' in cxx_flags else []
    define_macros = []

    if want_cuda(torch, CUDA_HOME):
        sources += sorted(glob.glob(os.path.join(csrc, 'ops', 'cuda', '*.cu')))
        extension = CUDAExtension
        define_macros.append(('WITH_CUDA', None))
        extra_compile_args['nvcc'] = ['-O3', '-std=c++17', '--expt-relaxed-constexpr']
        arch = os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)')
        print(f'pwlu_mmdet: building CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST={arch})')
    else:
        extension = CppExtension
        print('pwlu_mmdet: building CPU kernels only (no CUDA torch/toolkit; set FORCE_CUDA=1 '
              'to build the CUDA kernels anyway)')

    return [
        extension(
            name='pwlu_mmdet._C',
            sources=sources,
            include_dirs=[os.path.join(ROOT, csrc)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def get_cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(no_python_abi_suffix=False)}


def read_version():
    scope = {}
    with open(os.path.join(ROOT, 'pwlu_mmdet', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


def readme():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='pwlu-mmdet',
    version=read_version(),
    description='Piecewise Linear Unit (PWLU) learnable activation for MMDetection',
    long_description=readme(),
    long_description_content_type='text/markdown',
    author='pwlu-mmdet contributors',
    license='Apache-2.0',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.8',
    # torch is deliberately not pinned: users bring the (CUDA) build that matches their machine.
    install_requires=['torch>=2.4', 'numpy', 'mmengine>=0.10.0'],
    extras_require={
        'mmdet': ['mmdet>=3.0.0,<3.4', 'mmcv>=2.0.0rc4,<2.2.0', 'pycocotools'],
        'tests': ['pytest', 'onnx', 'onnxruntime', 'onnxscript', 'matplotlib'],
    },
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
)
