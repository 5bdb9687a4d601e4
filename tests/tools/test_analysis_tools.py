"""tools/analysis/{plot_pwlu,alignment_iou}.py and write_report_figures on the quick start's model.

A session fixture trains the quick start's PWLU Mask R-CNN (configs/synthetic) for 4 iterations
on a tiny generated data set, realigning at iteration 3, and keeps a phase-I (iter 2) and a
phase-II (iter 4) checkpoint.
"""
import csv
import os.path as osp

import pytest
import torch
from helpers import SYNTHETIC_PWLU_CONFIG, load_script

pytest.importorskip('mmdet')
pytest.importorskip('matplotlib')

from pwlu_mmdet import PWLU, pwlu_reference  # noqa: E402
from pwlu_mmdet.analysis import (build_model, build_train_dataloader,  # noqa: E402
                                 collect_alignment, plot_pwlu_curves, sample_curves,
                                 write_report_figures)

CONFIG = SYNTHETIC_PWLU_CONFIG
PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='session')
def quickstart(tmp_path_factory):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import pwlu_mmdet.models  # noqa: F401
    from pwlu_mmdet.datasets import generate_synthetic_coco
    tmp = tmp_path_factory.mktemp('quickstart')
    data_root = str(tmp / 'data')
    generate_synthetic_coco(data_root, num_train=8, num_val=2, img_size=64, min_size=12,
                            max_size=30)
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(tmp / 'work')
    cfg.train_dataloader.dataset.data_root = data_root + '/'
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=10**6)
    for key in ('val', 'test'):
        cfg[f'{key}_cfg'] = cfg[f'{key}_dataloader'] = cfg[f'{key}_evaluator'] = None
    cfg.default_hooks.checkpoint.interval = 2
    cfg.custom_hooks = [dict(type='PWLUHook', realign_iter=3, log_interval=2)]
    cfg.param_scheduler = None
    cfg.log_level = 'WARNING'
    cfg.experiment_name = f'analysis_quickstart_{id(tmp)}'
    Runner.from_cfg(cfg).train()
    work = cfg.work_dir
    return dict(config=osp.join(work, osp.basename(CONFIG)), phase1=osp.join(work, 'iter_2.pth'),
                phase2=osp.join(work, 'iter_4.pth'), work_dir=work)


def is_png(path):
    with open(path, 'rb') as f:
        return f.read(8) == PNG and osp.getsize(path) > 1000


def panel_lines(fig):
    """{panel title: {gid: (x, y)}} of a plot_pwlu_curves figure."""
    out = {}
    for ax in fig.axes:
        if ax.get_title():
            name = ax.get_title().replace(' (phase I: ReLU)', '')
            out[name] = {ln.get_gid(): (torch.as_tensor(ln.get_xdata()),
                                        torch.as_tensor(ln.get_ydata())) for ln in ax.lines}
    return out


def test_hand_computed_curve_is_plotted():
    # N = 2 on [B_L, B_R] = [-1, 1], Y = (1, 0, 2), K_L = -1, K_R = 0.5:
    # f(x) = 1 - (x + 1) for x < -1; 1 - (x + 1) on [-1, 0]; 2x on [0, 1]; 2 + (x - 1) / 2 above.
    def f(x):
        return torch.where(x < 0, -x, torch.where(x < 1, 2 * x, 2 + (x - 1) / 2))

    layer = PWLU(None, num_intervals=2, mode='layer')
    with torch.no_grad():
        layer.realign()
        layer.points.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
        layer.left_bound.fill_(-1.0)
        layer.right_bound.fill_(1.0)
        layer.left_slope.fill_(-1.0)
        layer.right_slope.fill_(0.5)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    torch.testing.assert_close(sample_curves(layer, x)[:, 0], f(x))
    fig, curves = plot_pwlu_curves({'l': layer}, num_points=101)
    xs, ys = panel_lines(fig)['l']['layer']
    assert xs.min() < -1 and xs.max() > 1 and len(xs) >= 101
    assert {-1.0, 1.0} <= set(xs.tolist())  # the range ends are sample points
    torch.testing.assert_close(ys, f(xs), rtol=1e-6, atol=1e-6)
    assert curves['l']['left_bound'].item() == -1 and curves['l']['right_bound'].item() == 1


def test_curves_without_the_compiled_op(monkeypatch):
    from pwlu_mmdet.layers import pwlu as pwlu_module
    layer = PWLU(5, num_intervals=6)
    torch.manual_seed(0)
    with torch.no_grad():
        layer.realign()
        layer.points.normal_()
        layer.left_slope.normal_()
        layer.right_slope.normal_()

    def no_op(*args):
        raise AssertionError('the compiled op was called')

    monkeypatch.setattr(pwlu_module, 'compiled_available', lambda: False)
    monkeypatch.setattr(pwlu_module, 'pwlu', no_op)
    fig, curves = plot_pwlu_curves({'l': layer}, num_channels=2)
    c = curves['l']
    assert c['channels'] == [0, 4]
    lb, rb = layer.valid_range()
    ref = pwlu_reference(c['x'].float().reshape(-1, 1).expand(-1, 5), layer.points, lb, rb,
                         layer.left_slope, layer.right_slope)
    torch.testing.assert_close(c['y'], ref.detach(), rtol=1e-5, atol=1e-5)
    lines = panel_lines(fig)['l']
    torch.testing.assert_close(lines['channel-4'][1], ref[:, 4].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lines['median'][1], ref.detach().quantile(0.5, dim=1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('phase', ['phase1', 'phase2'])
def test_plot_tool_on_quickstart_checkpoint(quickstart, tmp_path, phase):
    ckpt = quickstart[phase]
    out = str(tmp_path / 'curves.png')
    layers = load_script('tools/analysis/plot_pwlu.py').main([ckpt, '--out', out])
    assert is_png(out)
    assert all(layer.realigned == (phase == 'phase2') for layer in layers.values())
    # The curves drawn from the checkpoint alone are the model's own forward.
    model = build_model(quickstart['config'], ckpt)
    model_layers = {n: m for n, m in model.named_modules() if isinstance(m, PWLU)}
    assert list(layers) == list(model_layers) and len(layers) > 20
    fig, _ = plot_pwlu_curves(layers, num_points=64)
    panels = panel_lines(fig)
    assert list(panels) == list(model_layers)
    for name, lines in panels.items():
        layer = model_layers[name]
        for gid, (x, y) in lines.items():
            if not gid.startswith('channel-'):
                continue
            c = int(gid.split('-')[1])
            inp = x.reshape(-1, 1).expand(-1, layer.num_channels).contiguous()
            with torch.no_grad():
                expected = layer(inp)[:, c]
            torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6, msg=name)
    # --layers selects by regex; --config builds the model.
    out2 = str(tmp_path / 'l4.png')
    sel = load_script('tools/analysis/plot_pwlu.py').main([ckpt, '--config', quickstart['config'], '--layers',
                                       r'layer4\.', '--out', out2])
    assert list(sel) == [n for n in model_layers if 'layer4.' in n] and is_png(out2)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _iou(lo_a, hi_a, lo_b, hi_b):
    inter = max(0.0, min(hi_a, hi_b) - max(lo_a, lo_b))
    return inter / (max(hi_a, hi_b) - min(lo_a, lo_b))


def test_alignment_tool_on_quickstart_checkpoint(quickstart, tmp_path, capsys):
    out_dir = str(tmp_path / 'iou')
    report = load_script('tools/analysis/alignment_iou.py').main(
        [quickstart['config'], quickstart['phase2'], '--num-batches', '2', '--out-dir', out_dir])
    printed = capsys.readouterr().out
    assert is_png(report['histogram'])
    layers = _read_csv(report['csv'])
    channels = _read_csv(report['channel_csv'])
    assert len(layers) == len(report['alignment']) > 20
    assert len(channels) == sum(int(r['num_sets']) for r in layers)
    # Every channel's IoU is Eq. 7 of its own bounds and input range (interval arithmetic).
    for r in channels:
        v = {k: float(r[k]) for k in ('left_bound', 'right_bound', 'input_low', 'input_high')}
        assert float(r['iou']) == pytest.approx(
            _iou(v['left_bound'], v['right_bound'], v['input_low'], v['input_high']),
            rel=1e-4, abs=1e-5)
    mean = sum(float(r['iou']) for r in channels) / len(channels)
    assert report['mean_iou'] == pytest.approx(mean, rel=1e-4)
    assert f'mean IoU {report["mean_iou"]:.4f}' in printed
    assert 0 < report['mean_iou'] <= 1


def test_collected_statistics_match_an_independent_capture(quickstart):
    model = build_model(quickstart['config'], quickstart['phase2'])
    loader = build_train_dataloader(quickstart['config'])
    batches = [next(iter(loader))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alignment = collect_alignment(model, batches, num_batches=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Capture the raw input of one backbone layer (deterministic, unlike the sampled RoIs).
    name = 'backbone.layer1.0.act1'
    layer = dict(model.named_modules())[name]
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].double()))
    model.train()
    with torch.no_grad():
        model(**model.data_preprocessor(batches[0], True), mode='loss')
    model.eval()
    handle.remove()
    x = torch.cat([s.transpose(0, 1).reshape(s.shape[1], -1) for s in seen], dim=1)
    mean, std = x.mean(dim=1), x.std(dim=1, unbiased=False)
    res = alignment[name]
    torch.testing.assert_close(res.mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.std, std, rtol=1e-4, atol=1e-5)
    lb, rb = (t.detach().double() for t in layer.valid_range())
    expected = [_iou(lb[c].item(), rb[c].item(), (mean[c] - 3 * std[c]).item(),
                     (mean[c] + 3 * std[c]).item()) for c in range(len(mean))]
    assert res.iou.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    outside = ((x < lb.unsqueeze(1)) | (x > rb.unsqueeze(1))).double().mean(dim=1)
    torch.testing.assert_close(res.outside, outside)


def test_write_report_figures(quickstart, tmp_path):
    out = write_report_figures(quickstart['config'], quickstart['phase2'], str(tmp_path),
                               num_batches=1)
    assert is_png(out['curves']) and is_png(out['histogram'])
    assert osp.dirname(out['curves']) == str(tmp_path)
    channels = _read_csv(out['channel_csv'])
    assert out['mean_iou'] == pytest.approx(
        sum(float(r['iou']) for r in channels) / len(channels), rel=1e-4)
    assert list(out['stages'])[-1] == 'all' and out['stages']['all'][0] == pytest.approx(
        out['mean_iou'], rel=1e-6)
    assert len(_read_csv(out['csv'])) > 20
