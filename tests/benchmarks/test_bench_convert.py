"""benchmarks/bench_convert.py runs and reports a stock detector's sites."""
import pytest
from helpers import load_script

pytest.importorskip('mmdet')


def test_bench_convert_table(capsys):
    load_script('benchmarks/bench_convert.py').main(
        ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '--repeat', '1'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| retina')]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    assert cells[:3] == ['retinanet/retinanet_r50_fpn_1x_coco.py', '57', '47']
    assert float(cells[3]) > 0
