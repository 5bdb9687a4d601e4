"""Turn several runs' COCO results into one Markdown table in the paper's Table 3 layout.

Rows ReLU / Swish / F-ReLU / PWLU; columns Mask R-CNN box AP, Mask R-CNN mask AP and RetinaNet
AP, each as the paper's number and ours (``-`` where a run is missing). Inputs are the JSON files
written by ``tools/test.py --metrics-out`` (detector and activation are read from the config
name, e.g. ``mask-rcnn_r50-scratch_fpn_gn-all-pwlu_3x_coco.py``), a plain ``{metric: value}``
JSON, or mmengine's ``vis_data/scalars.json`` (the last line with COCO metrics is used). Name a
run explicitly with ``DET:ACT=FILE`` (DET: ``mask-rcnn`` or ``retinanet``).

Example::

    python tools/analysis/table3.py work_dirs/*/metrics.json --out table3.md
    python tools/analysis/table3.py mask-rcnn:pwlu=results/mrcnn_pwlu.json
"""
import argparse
import json
import os.path as osp
import re
import sys

# The paper's Table 3 (docs/method.md): COCO val2017 AP (%), ResNet-50-FPN GN, from scratch,
# 3x schedule.
PAPER = {
    'ReLU': dict(box=39.06, mask=35.3, retina=37.06),
    'Swish': dict(box=40.05, mask=36.1, retina=37.82),
    'F-ReLU': dict(box=40.25, mask=36.90, retina=38.35),
    'PWLU': dict(box=40.48, mask=37.13, retina=38.31),
}
ACTIVATIONS = {'relu': 'ReLU', 'swish': 'Swish', 'frelu': 'F-ReLU', 'f-relu': 'F-ReLU',
               'pwlu': 'PWLU'}
DETECTORS = ('mask-rcnn', 'retinanet')
# (detector, Table 3 column, COCO metric)
COLUMNS = (('mask-rcnn', 'box', 'coco/bbox_mAP'), ('mask-rcnn', 'mask', 'coco/segm_mAP'),
           ('retinanet', 'retina', 'coco/bbox_mAP'))
HEADERS = dict(box='Mask R-CNN box AP', mask='Mask R-CNN mask AP', retina='RetinaNet AP')


def load_metrics(path: str) -> tuple:
    """``(metrics, config)`` of a result file; ``config`` is None when the file has none."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON lines (mmengine scalars.json)
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        data = [d for d in lines if any(k.startswith('coco/') for k in d)]
        if not data:
            raise ValueError(f'{path}: no COCO metrics')
        data = data[-1]
    if 'metrics' in data:
        return data['metrics'], data.get('config')
    return data, data.get('config')


def identify(name: str) -> tuple:
    """``(detector, activation)`` from a config or file name."""
    base = osp.basename(name).lower()
    det = next((d for d in DETECTORS if base.startswith(d) or f'/{d}' in name.lower()), None)
    match = re.search(r'-(relu|swish|f-?relu|pwlu)[_.]', base)
    if det is None or match is None:
        raise ValueError(f'cannot tell detector and activation from {name!r}; '
                         'name the run as DET:ACT=FILE')
    return det, ACTIVATIONS[match.group(1)]


def collect(runs) -> dict:
    """``{(detector, activation): metrics}`` of ``FILE`` or ``DET:ACT=FILE`` arguments."""
    results = {}
    for run in runs:
        label, sep, path = run.rpartition('=')
        if not sep:
            path, label = run, None
        metrics, config = load_metrics(path)
        if label:
            det, _, act = label.partition(':')
            if det not in DETECTORS or act.lower() not in ACTIVATIONS:
                raise ValueError(f'bad run name {label!r}: want DET:ACT with DET in {DETECTORS}')
            key = (det, ACTIVATIONS[act.lower()])
        else:
            key = identify(config or path)
        if key in results:
            raise ValueError(f'two results for {key[0]} {key[1]}')
        results[key] = metrics
    return results


def ap(metrics: dict, key: str):
    """AP in percent (CocoMetric reports fractions), or None."""
    value = metrics.get(key)
    return None if value is None or value < 0 else 100 * value


def format_table(results: dict) -> str:
    heads = []
    for _, col, _ in COLUMNS:
        heads += [f'{HEADERS[col]} (paper)', f'{HEADERS[col]} (ours)']
    lines = ['| activation | ' + ' | '.join(heads) + ' |', '|---' * (len(heads) + 1) + '|']
    acts = list(PAPER) + sorted({a for _, a in results} - set(PAPER))
    for act in acts:
        cells = []
        for det, col, metric in COLUMNS:
            paper = PAPER.get(act, {}).get(col)
            ours = ap(results.get((det, act), {}), metric)
            cells += ['-' if paper is None else f'{paper:.2f}',
                      '-' if ours is None else f'{ours:.1f}']
        lines.append(f'| {act} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='COCO results as the paper\'s Table 3')
    parser.add_argument('runs', nargs='+', help='result files: FILE or DET:ACT=FILE')
    parser.add_argument('--out', help='also write the Markdown table to this file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        table = format_table(collect(args.runs))
    except (ValueError, OSError) as err:
        sys.exit(f'table3: {err}')
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return table


if __name__ == '__main__':
    main()
