"""Compile-only check of the CUDA sources with nvcc, usable on a machine without a GPU.

Compiles every ``csrc/**/*.cu`` for the given architectures against the installed torch's
headers, with the flags that ``torch.utils.cpp_extension.CUDAExtension`` adds (so that what
compiles here is what users build), and reports nvcc's errors. A CPU-only torch wheel lacks
``c10/cuda/impl/cuda_cmake_macros.h``; a one-line stand-in is generated for it.

Example:
    python tools/check_cuda_compile.py --arch 80 90
    python tools/check_cuda_compile.py --arch 90 --ptx ptx_out   # also keep each source's PTX

The PTX shows whether a change to the CUDA sources changed the code the GPU runs: a pure move
or rename gives the same PTX up to symbol names.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_include_dirs():
    from torch.utils.cpp_extension import include_paths
    return include_paths()


def extension_nvcc_flags():
    """The flags every CUDAExtension gets from torch (no half/bfloat16 operators or implicit
    conversions, relaxed constexpr), as torch's build of this project passes them."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    return list(COMMON_NVCC_FLAGS)


def compile_command(nvcc, source, arch, includes, output, ptx=False):
    target = ['-ptx', f'-arch=compute_{arch}'] if ptx else [
        '-c', f'-gencode=arch=compute_{arch},code=sm_{arch}']
    cmd = [nvcc, *target, source, '-o', output, '-std=c++17', '-O3', *extension_nvcc_flags(),
           '-DWITH_CUDA', '-D_GLIBCXX_USE_CXX11_ABI=1', '-Xcompiler', '-fPIC']
    for inc in includes:
        cmd += ['-I', inc]
    return cmd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', nargs='+', default=['80', '90'],
                        help='compute capabilities without the dot (default: 80 90)')
    parser.add_argument('--nvcc', default=shutil.which('nvcc'), help='nvcc to use')
    parser.add_argument('--ptx', metavar='DIR',
                        help='also write the PTX of every source and architecture into DIR')
    args = parser.parse_args(argv)
    if not args.nvcc:
        print('nvcc not found', file=sys.stderr)
        return 2
    sources = sorted(glob.glob(os.path.join(ROOT, 'csrc', '**', '*.cu'), recursive=True))
    with tempfile.TemporaryDirectory() as tmp:
        stub_dir = os.path.join(tmp, 'include')
        stub = os.path.join(stub_dir, 'c10', 'cuda', 'impl', 'cuda_cmake_macros.h')
        os.makedirs(os.path.dirname(stub))
        with open(stub, 'w') as f:
            f.write('#pragma once\n')
        includes = [os.path.join(ROOT, 'csrc'), *torch_include_dirs(),
                    sysconfig.get_paths()['include'], stub_dir]
        failed = 0
        for source in sources:
            for arch in args.arch:
                out = os.path.join(tmp, f'{os.path.basename(source)}.sm{arch}.o')
                cmd = compile_command(args.nvcc, source, arch, includes, out)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                name = os.path.relpath(source, ROOT)
                if proc.returncode != 0:
                    failed += 1
                    print(f'FAIL {name} sm_{arch}\n{proc.stdout}{proc.stderr}')
                    continue
                print(f'ok   {name} sm_{arch}')
                if args.ptx:
                    os.makedirs(args.ptx, exist_ok=True)
                    ptx = os.path.join(args.ptx, f'{os.path.basename(source)}.sm{arch}.ptx')
                    cmd = compile_command(args.nvcc, source, arch, includes, ptx, ptx=True)
                    subprocess.run(cmd, check=True, capture_output=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
