"""What ``tools/train.py`` and ``tools/test.py`` share: their common command-line options and
the runner they build (needs mmdet)."""
from .runner import (PHASE_ONE_FRACTION, add_common_args, add_pwlu_hook, build_runner,
                     init_cpu_distributed, load_config, read_config)

__all__ = ['PHASE_ONE_FRACTION', 'add_common_args', 'read_config', 'load_config',
           'add_pwlu_hook', 'init_cpu_distributed', 'build_runner']
