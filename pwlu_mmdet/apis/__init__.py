"""What ``tools/train.py`` and ``tools/test.py`` share: their common command-line options and
the runner they build (needs mmdet)."""
from .runner import add_common_args, build_runner, init_cpu_distributed, load_config

__all__ = ['add_common_args', 'load_config', 'init_cpu_distributed', 'build_runner']
