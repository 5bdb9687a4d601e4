"""pwlu_mmdet.analysis: collecting the alignment over batches and the report files, on
hand-computed cases."""
import csv
import math
import subprocess
import sys

import pytest
import torch
from helpers import channel_input, known_layer
from torch import nn

from pwlu_mmdet import PWLU
from pwlu_mmdet.analysis import collect_alignment, plot_iou_histogram, write_alignment_report


def test_imports_without_mmdet_and_matplotlib():
    code = ('import sys, pwlu_mmdet.analysis; '
            'assert "mmdet" not in sys.modules and "matplotlib" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True)


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
