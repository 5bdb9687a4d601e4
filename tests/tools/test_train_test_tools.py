"""End to end on generated data: tools/train.py, tools/test.py (COCO metrics), resume across the
PWLU phase switch, the quick start and the Table 3 report tool."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, SYNTHETIC_PWLU_CONFIG, load_script

pytest.importorskip('mmdet')

from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.datasets import generate_synthetic_coco  # noqa: E402

CONFIG = SYNTHETIC_PWLU_CONFIG
quickstart = load_script('tools/quickstart.py')
table3 = load_script('tools/analysis/table3.py')


def run_command(cmd, env=None):
    """Run cmd from the repository root; returns its output, asserting exit status 0 (which
    also catches a process that aborts at exit after its job finished)."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def run(tool, *args):
    """Run a tool in a fresh interpreter, as a user does; returns its output."""
    return run_command([sys.executable, osp.join(ROOT, 'tools', tool), *args])


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    generate_synthetic_coco(root, num_train=8, num_val=4)
    return root


def options(data_root, max_iters, *extra):
    return ['--cfg-options', *quickstart.data_options(data_root),
            f'train_cfg.max_iters={max_iters}', 'custom_hooks.0.realign_iter=2',
            'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
            'log_processor.window_size=1', 'default_hooks.logger.interval=1', *extra]


def checkpoint_phases(path):
    """``realigned`` of every PWLU in a checkpoint, read back through the layer."""
    state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    phases = []
    for key in sorted(k for k in state if k.endswith('.phase')):
        prefix = key[:-len('phase')]
        layer = PWLU(num_channels=state[prefix + 'running_mean'].numel())
        layer.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                               if k.startswith(prefix)})
        phases.append(layer.realigned)
    return phases


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    log = run('train.py', CONFIG, '--work-dir', work_dir, *options(data_root, 4))
    return work_dir, log


def test_train_switches_phase(trained):
    work_dir, log = trained
    assert 'realigned 28 PWLU layers at iter 2' in log
    phases_2 = checkpoint_phases(osp.join(work_dir, 'iter_2.pth'))
    phases_4 = checkpoint_phases(osp.join(work_dir, 'iter_4.pth'))
    assert len(phases_2) == len(phases_4) == 28
    assert not any(phases_2) and all(phases_4)


@pytest.mark.slow
def test_training_is_reproducible(trained, data_root, tmp_path):
    """The synthetic configs fix the seed: the same command gives the same weights (README's
    quick-start table can be reproduced), through the phase switch at iteration 2."""
    work_dir, _ = trained
    run('train.py', CONFIG, '--work-dir', str(tmp_path), *options(data_root, 4))
    first = torch.load(osp.join(work_dir, 'iter_4.pth'), weights_only=False)['state_dict']
    again = torch.load(str(tmp_path / 'iter_4.pth'), weights_only=False)['state_dict']
    assert first.keys() == again.keys()
    for key, value in first.items():
        assert torch.equal(value, again[key]), key


def test_test_tool_reports_coco_metrics(trained, data_root, tmp_path):
    work_dir, _ = trained
    metrics_file, dump = str(tmp_path / 'metrics.json'), str(tmp_path / 'preds.pkl')
    # score_thr 0: after 4 iterations the scores are low, but there must be predictions
    log = run('test.py', CONFIG, osp.join(work_dir, 'iter_4.pth'), '--work-dir', str(tmp_path),
              '--metrics-out', metrics_file, '--out', dump,
              *options(data_root, 4, 'model.test_cfg.rcnn.score_thr=0.0'))
    assert 'Evaluate annotation type *bbox*' in log and 'Evaluate annotation type *segm*' in log
    with open(metrics_file) as f:
        metrics = json.load(f)['metrics']
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0 <= metrics[key] <= 1
    assert osp.getsize(dump) > 0


def test_resume_before_the_switch_realigns(trained, data_root, tmp_path):
    work_dir, _ = trained
    log = run('train.py', CONFIG, '--work-dir', str(tmp_path), '--resume',
              osp.join(work_dir, 'iter_2.pth'), *options(data_root, 4))
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'realigned 28 PWLU layers at iter 2' in log
    assert all(checkpoint_phases(str(tmp_path / 'iter_4.pth')))


def test_resume_after_the_switch_stays_in_phase_two(trained, data_root, tmp_path):
    work_dir, _ = trained
    for name in ('iter_2.pth', 'iter_4.pth', 'last_checkpoint'):
        with open(osp.join(work_dir, name), 'rb') as src, open(tmp_path / name, 'wb') as dst:
            data = src.read()
            dst.write(data.replace(work_dir.encode(), str(tmp_path).encode())
                      if name == 'last_checkpoint' else data)
    log = run('train.py', CONFIG, '--work-dir', str(tmp_path), '--resume',
              *options(data_root, 6))
    assert 'resumed epoch: 0, iter: 4' in log
    assert 'realigned' not in log
    assert all(checkpoint_phases(str(tmp_path / 'iter_6.pth')))
    # the PWLU parameters went on training from the checkpoint (no second reset)
    before = torch.load(osp.join(work_dir, 'iter_4.pth'), weights_only=False)['state_dict']
    after = torch.load(str(tmp_path / 'iter_6.pth'), weights_only=False)['state_dict']
    key = 'backbone.layer1.0.act1.points'
    assert not torch.equal(before[key], after[key])
    assert (before[key] - after[key]).abs().max() < 0.1


def run_dist(script, *args):
    """A ``tools/dist_*.sh`` launcher with 2 processes (gloo on CPU), as a user runs it."""
    from pwlu_mmdet.utils.testing import free_port
    env = dict(os.environ, PORT=str(free_port()),
               PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    return run_command(['bash', osp.join(ROOT, 'tools', script), *args], env)


@pytest.mark.slow
def test_two_process_train_and_test(data_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    log = run_dist('dist_train.sh', CONFIG, '2', '--work-dir', work_dir, *options(data_root, 4))
    assert 'Distributed training: True' in log
    assert 'device_ids=None' in log  # CPU DDP (init_cpu_distributed), in the config dump
    assert log.count('realigned 28 PWLU layers at iter 2') == 1  # logged by rank 0 only
    assert all(checkpoint_phases(osp.join(work_dir, 'iter_4.pth')))
    metrics_file = str(tmp_path / 'metrics.json')
    log = run_dist('dist_test.sh', CONFIG, osp.join(work_dir, 'iter_4.pth'), '2', '--work-dir',
                   str(tmp_path / 'test'), '--metrics-out', metrics_file,
                   *options(data_root, 4, 'model.test_cfg.rcnn.score_thr=0.0'))
    with open(metrics_file) as f:
        metrics = json.load(f)['metrics']
    assert 0 <= metrics['coco/bbox_mAP_50'] <= 1 and 0 <= metrics['coco/segm_mAP_50'] <= 1


def test_quickstart_smoke(tmp_path):
    out = run('quickstart.py', '--data-root', str(tmp_path / 'data'), '--work-dir',
              str(tmp_path / 'work'), '--acts', 'pwlu', '--iters', '3', '--realign-iter', '1',
              '--num-train', '4', '--num-val', '2', '--min-ap50', '0', '--seed', '3')
    assert '[PWLU train] PWLUHook: realigned' in out
    with open(tmp_path / 'work' / 'pwlu' / 'train.log') as f:
        assert '    seed: 3\n' in f.read()  # mmengine's runtime environment report
    assert '| activation | bbox_mAP | bbox_mAP_50 | segm_mAP | segm_mAP_50 |' in out
    assert '| PWLU |' in out
    assert osp.exists(tmp_path / 'work' / 'pwlu' / 'metrics.json')
    assert glob.glob(str(tmp_path / 'data' / 'train' / '*.png'))
    # what the PWLU model learned, next to the AP table
    assert 'PWLU: mean alignment IoU' in out
    for name in ('pwlu_curves.png', 'alignment_iou.png', 'alignment_iou.csv'):
        assert osp.getsize(tmp_path / 'work' / 'pwlu' / name) > 0, name


def test_quickstart_fails_below_min_ap(tmp_path, monkeypatch):
    fake = dict(act='PWLU', metrics={'coco/bbox_mAP_50': 0.1}, train_time=1., test_time=1.)
    monkeypatch.setattr(quickstart, 'train_and_test', lambda act, args: fake)
    with pytest.raises(SystemExit, match='did not learn'):
        quickstart.main(['--data-root', str(tmp_path / 'd'), '--work-dir', str(tmp_path),
                         '--acts', 'pwlu', '--num-train', '2', '--num-val', '1',
                         '--no-figures'])


def _write(path, metrics, config=None):
    with open(path, 'w') as f:
        json.dump(dict(config=config, metrics=metrics) if config else metrics, f)
    return str(path)


def test_table3_table(tmp_path):
    runs = [
        _write(tmp_path / 'a.json', {'coco/bbox_mAP': 0.391, 'coco/segm_mAP': 0.352},
               'configs/mask_rcnn/mask-rcnn_r50-scratch_fpn_gn-all-relu_3x_coco.py'),
        _write(tmp_path / 'b.json', {'coco/bbox_mAP': 0.405, 'coco/segm_mAP': 0.371},
               'configs/mask_rcnn/mask-rcnn_r50-scratch_fpn_gn-all-pwlu_3x_coco.py'),
        'retinanet:swish=' + _write(tmp_path / 'c.json', {'coco/bbox_mAP': 0.378}),
        # the shipped F-ReLU config, identified by its name
        _write(tmp_path / 'd.json', {'coco/bbox_mAP': 0.384},
               'configs/retinanet/retinanet_r50-scratch_fpn_gn-all-frelu_3x_coco.py'),
    ]
    assert os.path.exists(os.path.join(ROOT, json.load(open(runs[-1]))['config']))
    scalars = tmp_path / 'scalars.json'
    scalars.write_text('{"loss": 1.0, "iter": 10}\n{"coco/bbox_mAP": 0.383, "iter": 20}\n')
    runs.append('retinanet:pwlu=' + str(scalars))
    table = table3.main([*runs, '--out', str(tmp_path / 'table.md')])
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
            for line in table.splitlines()[2:]}
    assert list(rows) == ['ReLU', 'Swish', 'F-ReLU', 'PWLU']
    assert rows['ReLU'] == ['39.06', '39.1', '35.30', '35.2', '37.06', '-']
    assert rows['Swish'] == ['40.05', '-', '36.10', '-', '37.82', '37.8']
    assert rows['F-ReLU'] == ['40.25', '-', '36.90', '-', '38.35', '38.4']
    assert rows['PWLU'] == ['40.48', '40.5', '37.13', '37.1', '38.31', '38.3']
    assert (tmp_path / 'table.md').read_text().strip() == table


@pytest.mark.parametrize('run_name', ['unknown.json', 'yolo:pwlu=x.json'])
def test_table3_rejects_unknown_runs(tmp_path, run_name):
    path = _write(tmp_path / 'x.json', {'coco/bbox_mAP': 0.3})
    arg = run_name.replace('x.json', path) if '=' in run_name else path
    with pytest.raises(SystemExit):
        table3.main([arg])


def test_table3_rejects_duplicates(tmp_path):
    a = _write(tmp_path / 'a.json', {'coco/bbox_mAP': 0.3})
    with pytest.raises(SystemExit, match='two results'):
        table3.main([f'retinanet:relu={a}', f'retinanet:ReLU={a}'])


def test_shell_launchers_exist_and_use_torchrun():
    for name in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh', 'slurm_test.sh'):
        path = osp.join(ROOT, 'tools', name)
        assert os.access(path, os.X_OK), name
        text = open(path).read()
        assert ('torchrun' in text) == name.startswith('dist')
        assert '--launcher' in text


def test_mmcv_ops_from_torchvision_stands_in_for_the_compiled_ops():
    """With the stand-in installed, mmcv.ops imports and binds RoIAlign and NMS to it; every
    other compiled op fails with an explanation when called (not at import)."""
    code = ('import runpy, sys\n'
            'shim = runpy.run_path("tools/misc/mmcv_ops_from_torchvision.py")\n'
            'shim["install"]()\n'
            'import mmcv.ops\n'
            'ext = sys.modules["mmcv._ext"]\n'
            'for name in ("mmcv.ops.roi_align", "mmcv.ops.nms"):\n'
            '    assert sys.modules[name].ext_module is ext\n'
            'assert ext.nms.__name__ == "_nms" and ext.roi_align_forward.__name__ == '
            '"_roi_align_forward"\n'
            'try:\n'
            '    ext.deform_conv_forward()\n'
            'except NotImplementedError as e:\n'
            '    assert "without its compiled ops" in str(e)\n'
            'else:\n'
            '    raise AssertionError("missing op did not raise")\n'
            'print("stand-in ok")\n')
    assert 'stand-in ok' in run_command([sys.executable, '-c', code])
