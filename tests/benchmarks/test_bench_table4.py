"""The Table 4 ResNet-18 classifier of benchmarks/resnet.py (mmdet's ActResNet and the
torch-only twin) and benchmarks/bench_table4.py, including a run with no OpenMMLab package
importable."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, load_script

from pwlu_mmdet.layers import APL, PAU, PWLU, FReLU

resnet = load_script('benchmarks/resnet.py')
TorchResNet, build_resnet_classifier = resnet.TorchResNet, resnet.build_resnet_classifier
HAS_MMDET = importlib.util.find_spec('mmdet') is not None
ACTS = [dict(type='ReLU'), dict(type='FReLU', norm_cfg=dict(type='BN')), dict(type='PWLU'),
        dict(type='APL'), dict(type='PAU')]


def _sites(model, cls):
    return [name for name, m in model.named_modules() if isinstance(m, cls)]


@pytest.mark.parametrize('act_cfg', ACTS, ids=lambda c: c['type'])
def test_torch_resnet18_sites(act_cfg):
    from pwlu_mmdet.layers import TORCH_ACTIVATIONS
    model = build_resnet_classifier(18, act_cfg, impl='torch')
    sites = _sites(model, TORCH_ACTIVATIONS[act_cfg['type']])
    assert len(sites) == 17  # stem + 8 blocks x 2
    if act_cfg['type'] != 'ReLU':
        assert not _sites(model, torch.nn.ReLU)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    widths = [m.num_channels for m in model.modules() if hasattr(m, 'num_channels')
              and m.num_channels is not None]
    if act_cfg['type'] in ('FReLU', 'PWLU', 'APL'):
        assert widths == [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4


def test_torch_resnet_rejects_other_depths():
    with pytest.raises(ValueError, match='depth must be one of'):
        TorchResNet(50)
    with pytest.raises(ValueError, match="impl must be 'auto'"):
        build_resnet_classifier(impl='tv')


@pytest.mark.skipif(not HAS_MMDET, reason='needs mmdet')
@pytest.mark.parametrize('act_cfg', ACTS, ids=lambda c: c['type'])
def test_torch_twin_matches_act_resnet(act_cfg):
    """Same module names, parameter and buffer shapes; loaded with the same weights, the same
    outputs: the torch-only fallback times the network that the mmdet path builds."""
    mm = build_resnet_classifier(18, act_cfg, impl='mmdet')
    tt = build_resnet_classifier(18, act_cfg, impl='torch')
    assert type(mm.backbone).__name__ == 'ActResNet'
    mm_state, tt_state = mm.state_dict(), tt.state_dict()
    assert {k: v.shape for k, v in mm_state.items()} == {k: v.shape for k, v in tt_state.items()}
    mm_types = {n: type(m).__name__ for n, m in mm.named_modules() if not list(m.children())}
    tt_types = {n: type(m).__name__ for n, m in tt.named_modules() if not list(m.children())}
    assert mm_types == tt_types
    # The same deterministic part of the initialisation (norms; zero_init_residual).
    for key, value in mm_state.items():
        if '.bn' in key or key.startswith('backbone.bn'):
            torch.testing.assert_close(tt_state[key], value, msg=key)
    tt.load_state_dict(mm_state)
    x = torch.randn(2, 3, 64, 64)
    mm.eval(), tt.eval()
    torch.testing.assert_close(tt(x), mm(x), rtol=0, atol=0)


def test_bench_table4_runs_every_activation():
    bench = load_script('benchmarks/bench_table4.py')
    args = bench.parse_args(['--batch-size', '2', '--image-size', '32', '--repeat', '2',
                             '--warmup', '0', '--impl', 'torch', '--acts', 'PWLU', 'FReLU',
                             'APL', 'PAU', 'Swish', 'PReLU'])
    results = bench.run(args)
    assert set(results) == {'inference', 'train'}
    for mode in results.values():
        assert list(mode)[0] == 'ReLU' and mode['ReLU'][1] == 1.0
        assert all(ms > 0 and ratio > 0 for ms, ratio in mode.values())
    table = bench.format_table(args, results)
    assert '| PWLU |' in table and '| 19.9 | 1.16 |' in table and '| PReLU |' in table


def test_bench_table4_realigns_pwlu():
    bench = load_script('benchmarks/bench_table4.py')
    args = bench.parse_args(['--image-size', '32', '--impl', 'torch'])
    model = bench.build_model('PWLU', args, torch.randn(2, 3, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, PWLU)]
    assert len(layers) == 17 and all(m.realigned for m in layers)
    for name, cls in (('FReLU', FReLU), ('APL', APL), ('PAU', PAU)):
        assert len(_sites(bench.build_model(name, args, torch.randn(2, 3, 32, 32)), cls)) == 17


def test_bench_table4_without_openmmlab(tmp_path):
    """The tool on a machine with torch only: site-packages without mmdet, mmcv, mmengine."""
    site = next(p for p in sys.path if p.endswith('site-packages')
                and os.path.isdir(os.path.join(p, 'torch')))
    bare = tmp_path / 'site'
    bare.mkdir()
    for entry in os.listdir(site):
        if not entry.startswith(('mmdet', 'mmcv', 'mmengine', 'pwlu')) and not entry.endswith(
                '.pth'):
            os.symlink(os.path.join(site, entry), bare / entry)
    code = ('import sys, runpy; '
            "sys.argv = ['bench_table4.py', '--batch-size', '2', '--image-size', '32', "
            "'--repeat', '1', '--warmup', '0', '--acts', 'PWLU', 'FReLU', 'APL', 'PAU']; "
            "runpy.run_path('benchmarks/bench_table4.py', run_name='__main__'); "
            "import importlib.util as u; "
            "assert all(u.find_spec(m) is None for m in ('mmdet', 'mmcv', 'mmengine'))")
    env = dict(os.environ, PYTHONPATH=f'{bare}{os.pathsep}{ROOT}')
    out = subprocess.run([sys.executable, '-S', '-c', code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'ResNet-18 (torch backbone)' in out.stdout and '| PAU |' in out.stdout
