"""MMEngine's ``compile`` option (``torch.compile`` of ``model.train_step``) with PWLUHook: phase I
statistics, the switch and phase II train as in eager mode."""
import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.runner import Runner  # noqa: E402

import pwlu_mmdet.engine  # noqa: E402,F401
from pwlu_mmdet.utils.testing import tiny_runner_cfg  # noqa: E402


def _train(tmp_path, compile_cfg):
    torch.manual_seed(0)  # the model is built here, before the Runner seeds
    cfg = tiny_runner_cfg(str(tmp_path), 6, 3)
    if compile_cfg is not None:
        cfg['cfg'] = dict(compile=compile_cfg)
    runner = Runner(**cfg)
    runner.train()
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_compiled_train_step_trains_as_eager(tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = _train(tmp_path / 'eager', None)
    # aot_eager: dynamo and AOTAutograd through the op's fake kernels and autograd, without
    # inductor's code generation (slow on a 2-core CPU).
    compiled = _train(tmp_path / 'compiled', dict(backend='aot_eager'))
    assert list(compiled) == list(eager)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, msg=key)
    assert int(compiled['act1.phase']) == 2  # phase II after the switch at iteration 3
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] > 0  # it did compile
