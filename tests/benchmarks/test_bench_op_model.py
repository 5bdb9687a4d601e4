"""Smoke tests of benchmarks/bench_op.py and bench_model.py: they run, measure every case and
compute their ratios; and the timing rule they share (benchmarks/timing.py)."""
import pytest
from helpers import SYNTHETIC_PWLU_CONFIG, load_script

from pwlu_mmdet.ops import compiled_available


def test_timing_rounds_start_with_another_callable_and_ratios_are_per_round():
    timing = load_script('benchmarks/timing.py')
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ('a', 'b', 'c')}
    ms = {'a': iter([1.0, 2.0, 4.0]), 'b': iter([2.0, 2.0, 2.0]), 'c': iter([3.0, 3.0, 12.0])}
    name_of = {fn: name for name, fn in fns.items()}

    def timer(fn):
        return lambda: (fn(), next(ms[name_of[fn]]))[1]

    times = timing.interleaved_times(fns, timer, repeat=3, warmup=1)
    assert calls == ['a', 'b', 'c'] + ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']
    assert times == {'a': [1.0, 2.0, 4.0], 'b': [2.0, 2.0, 2.0], 'c': [3.0, 3.0, 12.0]}
    ratios = timing.median_ratios(times, base='a')
    # c is 3x a in two rounds of three: 3, the median of the per-round ratios, where the ratio
    # of the medians would say 1.5
    assert ratios == {'a': (2.0, 1.0), 'b': (2.0, 1.0), 'c': (3.0, 3.0)}


@pytest.mark.skipif(not compiled_available(), reason='needs the compiled op')
def test_bench_op_measures_every_case():
    bench = load_script('benchmarks/bench_op.py')
    args = bench.parse_args(['--shape', '2', '16', '8', '8', '--repeat', '2', '--warmup', '1',
                             '--no-compile'])
    rows = bench.run(args)
    cases = {(r['impl'], r['mode']) for r in rows}
    for impl in ('ReLU', 'SiLU', 'reference (eager)'):
        assert {(impl, 'forward'), (impl, 'forward+backward')} <= cases
    assert {('PWLU op', m) for m in ('forward', 'forward+backward', 'phase I forward',
                                     'phase I forward+backward')} <= cases
    assert ('pwlu_ (in place)', 'forward') in cases
    assert all(r['ms'] > 0 and r['gbps'] > 0 for r in rows)
    assert [r['ratio'] for r in rows if r['impl'] == 'ReLU'] == [1.0, 1.0]
    table = bench.format_table(rows, args)
    assert '| PWLU op | forward+backward |' in table


@pytest.mark.skipif(not compiled_available(), reason='needs the compiled op')
def test_bench_op_suite_cases_parse_and_layer_wise_runs(capsys):
    bench = load_script('benchmarks/bench_op.py')
    for case in bench.SUITES['gpu']:
        bench.parse_args(['--suite', 'gpu', *case])
    bench.main(['--shape', '2', '16', '8', '8', '--layer-wise', '--channels-last', '--repeat',
                '2', '--warmup', '1', '--no-compile', '--no-reference'])
    out = capsys.readouterr().out
    assert 'channels_last, layer-wise' in out and '| PWLU op | forward+backward |' in out


@pytest.mark.skipif(not compiled_available(), reason='needs the compiled op')
def test_bench_op_profile_lists_the_op_kernels():
    bench = load_script('benchmarks/bench_op.py')
    args = bench.parse_args(['--shape', '2', '16', '8', '8', '--profile', '--no-compile',
                             '--no-reference'])
    x, cases = bench.make_cases(args)
    rows = bench.profile_kernels(cases['PWLU op']['forward+backward'], x.device, iters=2)
    kernels = {r['kernel']: r for r in rows}
    assert {'pwlu_mmdet::pwlu', 'pwlu_mmdet::pwlu_backward'} <= set(kernels)
    assert kernels['pwlu_mmdet::pwlu_backward']['calls'] == 1
    assert all(r['ms'] > 0 for r in rows)
    assert [r['ms'] for r in rows] == sorted((r['ms'] for r in rows), reverse=True)
    text = bench.report(args)
    assert 'PWLU op, phase I forward:' in text and '`pwlu_mmdet::relu_with_moments`' in text


def test_bench_model_rounds_take_medians_and_peaks():
    bench = load_script('benchmarks/bench_model.py')
    rounds = [{'ReLU': {'train_ms': t, 'inference_ms': 2 * t, 'peak_rss_mb': m, 'num_pwlu': 0}}
              for t, m in ((10.0, 100.0), (30.0, 90.0), (11.0, 95.0))]
    combined = bench.combine_rounds(rounds)['ReLU']
    assert combined == {'train_ms': 11.0, 'inference_ms': 22.0, 'peak_rss_mb': 100.0,
                        'num_pwlu': 0}


@pytest.mark.slow
def test_bench_model_runs_each_activation():
    bench = load_script('benchmarks/bench_model.py')
    args = bench.parse_args([
        SYNTHETIC_PWLU_CONFIG,
        '--repeat', '1', '--warmup', '0', '--rounds', '1', '--activations', 'ReLU', 'PWLU',
        '--image-size', '64', '64'])
    results = {act: bench.run_child(args, act) for act in ('ReLU', 'PWLU')}
    assert results['ReLU']['num_pwlu'] == 0 and results['PWLU']['num_pwlu'] > 0
    assert all(r['train_ms'] > 0 and r['inference_ms'] > 0 for r in results.values())
    table = bench.format_table(args, bench.combine_rounds([results]))
    assert '| PWLU |' in table
    interleaved = bench.measure_interleaved(args, ['ReLU', 'PWLU'])
    assert interleaved['PWLU']['num_pwlu'] == results['PWLU']['num_pwlu']
    assert all(r['train_ms'] > 0 and r['inference_ms'] > 0 for r in interleaved.values())
    assert interleaved['ReLU']['train_ratio'] == 1.0
    assert interleaved['PWLU']['train_ratio'] > 0 and interleaved['PWLU']['inference_ratio'] > 0


@pytest.mark.slow
def test_bench_model_converts_a_stock_detector_with_config_overrides():
    """``mmdet::`` configs (a stock detector, converted by ``model.act_cfg``) and
    ``--cfg-options``, in this process and passed on to the child processes."""
    bench = load_script('benchmarks/bench_model.py')
    args = bench.parse_args([
        'mmdet::yolox/yolox_s_8xb8-300e_coco.py', '--repeat', '1', '--warmup', '0',
        '--activations', 'ReLU', 'PWLU', '--image-size', '64', '64', '--batch-size', '1',
        '--no-mask', '--cfg-options', 'model.data_preprocessor.batch_augments=None',
        'model.backbone.deepen_factor=0.67'])
    interleaved = bench.measure_interleaved(args, ['ReLU', 'PWLU'])
    # YOLOX-s has 74 sites; twice its CSP blocks in the backbone, 90.
    assert interleaved['PWLU']['num_pwlu'] == 90 and interleaved['ReLU']['num_pwlu'] == 0
    assert bench.run_child(args, 'PWLU')['num_pwlu'] == 90
