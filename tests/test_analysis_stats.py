"""pwlu_mmdet.analysis: input statistics, Eq. 7 IoU and the report files on hand-computed cases."""
import csv
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from pwlu_mmdet import PWLU
from pwlu_mmdet.analysis import (InputStatistics, collect_alignment, plot_iou_histogram,
                                 stage_name, summarize_stages, write_alignment_report)


def known_layer(left, right, num_channels=None, mode='channel'):
    """A phase-II PWLU (ReLU points) with the given per-set range [B_L, B_R]."""
    layer = PWLU(num_channels, num_intervals=4, mode=mode)
    with torch.no_grad():
        layer.num_batches_tracked.fill_(1)  # statistics "seen": no realign() warning
        layer.realign()
        layer.set_relu_range(torch.tensor(left, dtype=torch.float32),
                          torch.tensor(right, dtype=torch.float32))
    return layer


def channel_input(values):
    """(N=1, C, W) input whose channel c holds values[c]."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(0)


def test_imports_without_mmdet_and_matplotlib():
    code = ('import sys, pwlu_mmdet.analysis; '
            'assert "mmdet" not in sys.modules and "matplotlib" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_hand_computed_iou_and_outside():
    # Channel 0: x = -1, 1, -1, 1 -> mean 0, std 1 -> input range [-3, 3].
    #   [B_L, B_R] = [-0.5, 2]: IoU = 2.5 / 6; outside: the two -1 (< -0.5) -> 1/2.
    # Channel 1: x = 1, 3, 1, 3 -> mean 2, std 1 -> [-1, 5]; [B_L, B_R] = [6, 8]: disjoint,
    #   IoU 0; every input is below B_L -> outside 1.
    # Channel 2: x = 0, 0, 0, 4 -> mean 1, std sqrt(3) -> [1 - 3 sqrt 3, 1 + 3 sqrt 3];
    #   [B_L, B_R] = [-10, 10] contains it: IoU = 6 sqrt 3 / 20; outside 0.
    layer = known_layer([-0.5, 6.0, -10.0], [2.0, 8.0, 10.0], num_channels=3)
    x = channel_input([[-1, 1, -1, 1], [1, 3, 1, 3], [0, 0, 0, 4]])
    stats = InputStatistics({'act': layer})
    with stats:
        layer(x)
    assert not layer._forward_pre_hooks  # detached on exit
    res = stats.results()['act']
    assert res.count == 4
    torch.testing.assert_close(res.mean, torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(res.std, torch.tensor([1.0, 1.0, math.sqrt(3)],
                                                     dtype=torch.float64))
    expected = torch.tensor([2.5 / 6, 0.0, 6 * math.sqrt(3) / 20], dtype=torch.float64)
    torch.testing.assert_close(res.iou, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res.outside, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))


def test_pooled_over_calls_and_layer_mode():
    # Two calls of a layer-wise PWLU: x = [0, 2] then [4, 6] -> pooled mean 3,
    # population var (9 + 1 + 1 + 9) / 4 = 5 -> range [3 - 3 sqrt 5, 3 + 3 sqrt 5];
    # [B_L, B_R] = [0, 3]: inside the range -> IoU = 3 / (6 sqrt 5); outside: 4 and 6 -> 1/2.
    layer = known_layer([0.0], [3.0], mode='layer')
    stats = InputStatistics([('act', layer)])
    with stats:
        layer(torch.tensor([[0.0], [2.0]]))
        layer(torch.tensor([[4.0, 6.0]]))
    res = stats.results()['act']
    assert res.count == 4 and res.num_sets == 1
    assert res.mean.item() == pytest.approx(3.0)
    assert res.std.item() == pytest.approx(math.sqrt(5))
    assert res.iou.item() == pytest.approx(3 / (6 * math.sqrt(5)), rel=1e-6)
    assert res.outside.item() == pytest.approx(0.5)
    # sigma override: [3 - sqrt 5, 3 + sqrt 5] = [0.76, 5.24]; inter [0.76, 3], union [0, 5.24].
    stats_1 = InputStatistics([('act', layer)], sigma=1.0)
    stats_1.add('act', torch.tensor([[0.0, 2.0, 4.0, 6.0]]))
    s5 = math.sqrt(5)
    assert stats_1.results()['act'].iou.item() == pytest.approx((s5 - 0) / (3 + s5), rel=1e-6)


def test_layer_without_input_is_skipped_or_nan():
    stats = InputStatistics({'a': known_layer([0.0], [1.0], mode='layer')})
    assert stats.results() == {}
    res = stats.results(include_empty=True)['a']
    assert res.count == 0 and torch.isnan(res.iou).all()


def test_stage_names_and_summary():
    assert stage_name('backbone.layer1.0.act1') == 'backbone.layer1'
    assert stage_name('backbone.act1') == 'backbone'
    assert stage_name('roi_head.bbox_head.shared_convs.0.activate') == 'roi_head.bbox_head'
    assert stage_name('rpn_head.rpn_act') == 'rpn_head'
    assert stage_name('act1') == 'act1'
    assert stage_name('backbone.layer1.0.act1', depth=0) == 'all'
    a = known_layer([-0.5, 6.0, -10.0], [2.0, 8.0, 10.0], num_channels=3)
    b = known_layer([0.0], [3.0], mode='layer')
    stats = InputStatistics({'s.x.a': a, 't.b': b})
    stats.add('s.x.a', channel_input([[-1, 1, -1, 1], [1, 3, 1, 3], [0, 0, 0, 4]]))
    stats.add('t.b', torch.tensor([[0.0, 2.0, 4.0, 6.0]]))
    summary = summarize_stages(stats.results().values())
    assert list(summary) == ['s.x', 't', 'all']
    iou_a = [2.5 / 6, 0.0, 6 * math.sqrt(3) / 20]
    iou_b = 3 / (6 * math.sqrt(5))
    assert summary['s.x'][0] == pytest.approx(sum(iou_a) / 3, rel=1e-6)
    assert summary['s.x'][1] == pytest.approx((2 + 4 + 0) / 12)
    # Overall: mean over the 4 sets; outside over the 16 elements (2 + 4 + 0 + 2).
    assert summary['all'][0] == pytest.approx((sum(iou_a) + iou_b) / 4, rel=1e-6)
    assert summary['all'][1] == pytest.approx(8 / 16)
    assert list(summarize_stages(stats.results().values(), depth=0)) == ['all']


class TwoLayerModel(nn.Module):
    """A stand-in for an mmengine model: ``data_preprocessor`` + ``forward(inputs, mode)``."""

    def __init__(self, act, extra):
        super().__init__()
        self.act = act
        self.extra = extra
        self.data_preprocessor = lambda batch, training=False: dict(inputs=batch)

    def forward(self, inputs, mode='loss'):
        return self.extra(self.act(inputs))


def test_collect_alignment_keeps_state_and_writes_hand_computed_csv(tmp_path):
    layer = known_layer([-0.5, 6.0, -10.0], [2.0, 8.0, 10.0], num_channels=3)
    phase_one = PWLU(3, num_intervals=4)  # would update its running statistics in training
    model = TwoLayerModel(layer, phase_one)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [channel_input([[-1, 1], [1, 3], [0, 0]]), channel_input([[-1, 1], [1, 3], [0, 4]])]
    alignment = collect_alignment(model, batches, num_batches=5)
    # Training forward without any change of state: buffers restored, still in eval mode.
    assert not model.training and not layer.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert phase_one.num_batches_tracked.item() == 0

    report = write_alignment_report(alignment, str(tmp_path))
    with open(report['channel_csv']) as f:
        rows = [r for r in csv.DictReader(f) if r['layer'] == 'act']
    assert [float(r['iou']) for r in rows] == pytest.approx(
        [2.5 / 6, 0.0, 6 * math.sqrt(3) / 20], rel=1e-5)
    assert [float(r['outside_fraction']) for r in rows] == pytest.approx([0.5, 1.0, 0.0])
    assert [float(r['input_low']) for r in rows] == pytest.approx(
        [-3.0, -1.0, 1 - 3 * math.sqrt(3)], rel=1e-5)
    with open(report['csv']) as f:
        layers = {r['layer']: r for r in csv.DictReader(f)}
    assert set(layers) == {'act', 'extra'}
    assert float(layers['act']['mean_iou']) == pytest.approx(
        (2.5 / 6 + 6 * math.sqrt(3) / 20) / 3, rel=1e-5)
    assert layers['act']['phase'] == 'II' and layers['extra']['phase'] == 'I'
    assert int(layers['act']['inputs_per_set']) == 4
    all_ious = [float(r['iou']) for r in csv.DictReader(open(report['channel_csv']))]
    assert report['mean_iou'] == pytest.approx(sum(all_ious) / len(all_ious), rel=1e-5)
    with open(report['histogram'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_histogram_fractions():
    _, hists = plot_iou_histogram({'a': torch.tensor([0.01, 0.02, 0.51, 0.99, float('nan')])},
                                  bins=4)
    fractions, edges = hists['a']
    torch.testing.assert_close(fractions, torch.tensor([0.5, 0.0, 0.25, 0.25],
                                                       dtype=torch.float64))
    assert edges[0] == 0 and edges[-1] == 1
