"""What importing pwlu_mmdet.engine registers, and what importing the torch-only parts does
not touch."""
import importlib.util
import subprocess
import sys

import pytest
import torch

from pwlu_mmdet.layers import APL, PAU, PWLU, ChannelPReLU, FReLU

pytest.importorskip('mmengine')

import pwlu_mmdet.engine  # noqa: E402,F401  (registers the layers, the hook, the constructor)


def test_torch_only_imports_leave_mmengine_alone():
    """``import pwlu_mmdet`` (the op, the layers, the analysis) neither imports mmengine nor
    patches its checkpoint loader; ``import pwlu_mmdet.engine`` does both, visibly."""
    code = ('import sys\n'
            'import pwlu_mmdet, pwlu_mmdet.ops, pwlu_mmdet.layers, pwlu_mmdet.analysis\n'
            'assert not [m for m in sys.modules if m.split(".")[0] == "mmengine"]\n'
            'from mmengine.runner.checkpoint import CheckpointLoader\n'
            'load = CheckpointLoader.__dict__["load_checkpoint"].__func__\n'
            'assert not hasattr(load, "__wrapped__")  # mmengine\'s own function\n'
            'import pwlu_mmdet.engine\n'
            'load = CheckpointLoader.__dict__["load_checkpoint"].__func__\n'
            'assert load.__wrapped__ is not None  # functools.wraps of the patch\n'
            'from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS\n'
            'assert MODELS.get("PWLU") is pwlu_mmdet.PWLU and HOOKS.get("PWLUHook")\n'
            'assert OPTIM_WRAPPER_CONSTRUCTORS.get("PWLUOptimWrapperConstructor")\n'
            'print("ok")\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_registered_in_mmengine_models_with_and_without_scope():
    pytest.importorskip('mmengine')
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    from mmengine.registry import MODELS, DefaultScope

    assert MODELS.get('PWLU') is PWLU
    layer = mmcv_cnn.build_activation_layer(dict(type='PWLU', num_channels=64))
    assert isinstance(layer, PWLU) and layer.num_channels == 64
    pytest.importorskip('mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        layer = mmcv_cnn.build_activation_layer(dict(type='PWLU', num_channels=8,
                                                     num_intervals=8))
        assert isinstance(layer, PWLU) and layer.num_intervals == 8
        conv = mmcv_cnn.ConvModule(3, 8, 3, act_cfg=dict(type='PWLU', num_channels=8))
        assert isinstance(conv.activate, PWLU)
        assert conv(torch.randn(1, 3, 5, 5)).shape == (1, 8, 3, 3)


@pytest.mark.skipif(importlib.util.find_spec('mmcv') is None, reason='needs mmcv')
@pytest.mark.parametrize('name,cls', [('FReLU', FReLU), ('APL', APL), ('PAU', PAU),
                                      ('ChannelPReLU', ChannelPReLU), ('PWLU', PWLU)])
def test_build_activation_layer(name, cls):
    from mmcv.cnn import build_activation_layer

    layer = build_activation_layer(dict(type=name, num_channels=32))
    assert type(layer) is cls and layer.num_channels == 32
    if name == 'FReLU':
        with pytest.raises(TypeError, match='num_channels'):
            build_activation_layer(dict(type=name))  # a depthwise conv needs its width
    elif name == 'PAU':
        assert build_activation_layer(dict(type=name)).num_channels is None  # layer-wise
    else:
        with pytest.raises(ValueError, match='num_channels is required'):
            build_activation_layer(dict(type=name))
        assert build_activation_layer(dict(type=name, mode='layer')).num_channels is None
