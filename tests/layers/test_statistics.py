"""pwlu_mmdet.layers.statistics: input statistics, Eq. 7 IoU and stage summaries on
hand-computed cases."""
import math

import pytest
import torch
from helpers import channel_input, known_layer, normal_input

from pwlu_mmdet import PWLU, statistics_step
from pwlu_mmdet.layers import InputStatistics, alignment_iou, stage_name, summarize_stages


def test_alignment_iou():
    iou = alignment_iou(torch.tensor([-1., 0., 2., 1.]), torch.tensor([1., 1., 3., 1.]),
                        torch.tensor([0., 1., 0., 1.]), torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.]))
    torch.testing.assert_close(iou, torch.tensor([1., 1 / 2, 0., 1.]))


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


def test_shared_layer_measured_on_the_distribution_it_was_reset_from():
    """A layer called on three levels of different sizes (as FPN levels), reset from one step
    (momentum 1): measured on the same calls, its IoU is 1 and its fraction outside is the
    mean of the levels' fractions. Weighted by elements instead, the finest level would set
    the measured range and the IoU would be below 1 by construction."""
    layer = PWLU(3, momentum=1.0)
    calls = [normal_input(i, (2, 3, 32 >> (2 * i), 32 >> (2 * i)), mean=3.0 * i - 3, std=1 + i)
             for i in range(3)]
    with statistics_step(layer):
        for x in calls:
            layer(x)
    layer.realign()
    stats = InputStatistics({'act': layer})
    with stats:
        for x in calls:
            layer(x)
    res = stats.results()['act']
    torch.testing.assert_close(res.iou, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    left, right = (t.detach().double().reshape(1, -1, 1, 1) for t in layer.valid_range())
    per_call = torch.stack([((x < left) | (x > right)).double().mean(dim=(0, 2, 3))
                            for x in calls])
    torch.testing.assert_close(res.outside, per_call.mean(0))
    assert res.count == sum(x.numel() // 3 for x in calls)
