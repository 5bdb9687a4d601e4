"""Alignment IoU reports (the paper's Figure 6) and the quick start's report figures.

CSV writing needs nothing but the standard library and torch; matplotlib is imported inside
:func:`plot_iou_histogram`; mmdet only by the functions that take a config.
"""
import csv
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

from ..layers import LayerAlignment, find_pwlu_layers, stage_name, summarize_stages
from .curves import filter_layers, plot_pwlu_curves, save_figure

__all__ = ['LAYER_CSV_FIELDS', 'CHANNEL_CSV_FIELDS', 'mean_iou', 'layer_rows', 'channel_rows',
           'write_csv', 'plot_iou_histogram', 'write_alignment_report', 'run_alignment_iou',
           'write_report_figures']

LAYER_CSV_FIELDS = ('layer', 'stage', 'mode', 'phase', 'num_sets', 'inputs_per_set', 'mean_iou',
                    'median_iou', 'min_iou', 'max_iou', 'outside_fraction', 'mean_left_bound',
                    'mean_right_bound', 'mean_input_mean', 'mean_input_std')
CHANNEL_CSV_FIELDS = ('layer', 'set', 'left_bound', 'right_bound', 'input_mean', 'input_std',
                      'input_low', 'input_high', 'iou', 'outside_fraction')

Alignment = Mapping[str, LayerAlignment]


def mean_iou(alignment: Alignment) -> float:
    """Mean Eq. 7 IoU over every parameter set (channel) of every layer that saw input."""
    ious = [a.iou for a in alignment.values() if a.count > 0]
    return torch.cat(ious).mean().item() if ious else float('nan')


def layer_rows(alignment: Alignment, stage_depth: int = 2) -> list:
    """One CSV row (dict with :data:`LAYER_CSV_FIELDS`) per layer."""
    rows = []
    for name, a in alignment.items():
        rows.append(
            OrderedDict(
                layer=name, stage=stage_name(name, stage_depth), mode=a.mode,
                phase='II' if a.realigned else 'I', num_sets=a.num_sets, inputs_per_set=a.count,
                mean_iou=a.iou.mean().item(), median_iou=a.iou.median().item(),
                min_iou=a.iou.min().item(), max_iou=a.iou.max().item(),
                outside_fraction=a.outside.mean().item(),
                mean_left_bound=a.left_bound.mean().item(),
                mean_right_bound=a.right_bound.mean().item(),
                mean_input_mean=a.mean.mean().item(), mean_input_std=a.std.mean().item()))
    return rows


def channel_rows(alignment: Alignment) -> list:
    """One CSV row (dict with :data:`CHANNEL_CSV_FIELDS`) per parameter set of every layer."""
    rows = []
    for name, a in alignment.items():
        low, high = a.mean - a.sigma * a.std, a.mean + a.sigma * a.std
        for i in range(a.num_sets):
            rows.append(
                OrderedDict(
                    layer=name, set=i, left_bound=a.left_bound[i].item(),
                    right_bound=a.right_bound[i].item(), input_mean=a.mean[i].item(),
                    input_std=a.std[i].item(), input_low=low[i].item(),
                    input_high=high[i].item(), iou=a.iou[i].item(),
                    outside_fraction=a.outside[i].item()))
    return rows


def write_csv(rows: Sequence[Mapping], out_file: str, fields: Sequence[str]) -> str:
    """Write ``rows`` to ``out_file`` (floats with 6 significant digits); returns the path."""
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    with open(out_file, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f'{v:.6g}' if isinstance(v, float) else v
                             for k, v in row.items()})
    return out_file


def plot_iou_histogram(ious: Union[torch.Tensor, Dict[str, torch.Tensor]],
                       out_file: Optional[str] = None,
                       bins: int = 20,
                       title: Optional[str] = None):
    """Histogram of per-channel alignment IoUs on ``[0, 1]`` (the paper's Figure 6).

    Args:
        ious (Tensor | dict[str, Tensor]): IoU values, or several distributions by label (e.g.
            two training methods, as in the paper), drawn as overlaid step histograms.
        out_file (str, optional): Where to save the figure. Defaults to None.
        bins (int): Number of equal bins on ``[0, 1]``. Defaults to 20.
        title (str, optional): Axes title. Defaults to a summary of the first distribution.

    Returns:
        tuple[Figure, dict]: The figure and, per label, ``(fractions, bin_edges)`` where
        ``fractions`` is the fraction of channels in each bin (it sums to 1).
    """
    from matplotlib.figure import Figure

    if isinstance(ious, torch.Tensor):
        ious = {'PWLU': ious}
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    hists = OrderedDict()
    for k, (label, values) in enumerate(ious.items()):
        values = values.double().flatten()
        values = values[~torch.isnan(values)]
        counts = torch.histc(values, bins=bins, min=0, max=1)
        fractions = counts / max(values.numel(), 1)
        hists[label] = (fractions, edges)
        color = f'C{k}'
        ax.stairs(fractions.numpy(), edges.numpy(), fill=len(ious) == 1, alpha=0.6, color=color,
                  label=f'{label} (mean {values.mean().item():.3f}, n={values.numel()})')
        ax.axvline(values.mean().item(), color=color, ls='--', lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel('IoU of [B_L, B_R] and [mu - 3 sigma, mu + 3 sigma]')
    ax.set_ylabel('fraction of channels')
    ax.legend(fontsize=7, loc='upper left')
    ax.set_title(title or 'PWLU alignment IoU (Eq. 7)', fontsize=9)
    fig.tight_layout()
    if out_file is not None:
        save_figure(fig, out_file)
    return fig, hists


def write_alignment_report(alignment: Alignment, out_dir: str, prefix: str = 'alignment_iou',
                           stage_depth: int = 2, title: Optional[str] = None) -> dict:
    """Write the IoU histogram PNG, the per-layer CSV and the per-channel CSV.

    Args:
        alignment (Mapping[str, LayerAlignment]): From :func:`collect_alignment` or
            :meth:`InputStatistics.results`.
        out_dir (str): Output folder (created).
        prefix (str): File name prefix. Defaults to ``'alignment_iou'``.
        stage_depth (int): See :func:`stage_name`. Defaults to 2.
        title (str, optional): Histogram title.

    Returns:
        dict: ``histogram``, ``csv`` (per layer), ``channel_csv`` (paths), ``mean_iou`` (over
        every channel) and ``stages`` (``{stage: (mean IoU, fraction outside)}``, ``'all'``
        last).
    """
    if not alignment:
        raise ValueError('write_alignment_report: no PWLU layer saw any input')
    os.makedirs(out_dir, exist_ok=True)
    ious = torch.cat([a.iou for a in alignment.values()])
    histogram = osp.join(out_dir, f'{prefix}.png')
    plot_iou_histogram(ious, histogram, title=title)
    return dict(
        histogram=histogram,
        csv=write_csv(layer_rows(alignment, stage_depth), osp.join(out_dir, f'{prefix}.csv'),
                      LAYER_CSV_FIELDS),
        channel_csv=write_csv(channel_rows(alignment),
                              osp.join(out_dir, f'{prefix}_channels.csv'), CHANNEL_CSV_FIELDS),
        mean_iou=mean_iou(alignment),
        stages=summarize_stages(alignment.values(), stage_depth))


def _collect_from_config(model, config, num_batches: int, cfg_options: Optional[dict],
                         mode: str, seed: int):
    from .collect import build_train_dataloader, collect_alignment
    loader = build_train_dataloader(config, cfg_options, seed=seed)
    return collect_alignment(model, loader, num_batches, mode=mode)


def run_alignment_iou(config, checkpoint: str, out_dir: str, num_batches: int = 8,
                      cfg_options: Optional[dict] = None, mode: str = 'loss', seed: int = 0,
                      device: str = 'cpu', prefix: str = 'alignment_iou') -> dict:
    """What ``tools/analysis/alignment_iou.py`` does: K training batches -> IoU report.

    Args:
        config (str | Config): The model/data config.
        checkpoint (str): The checkpoint to analyse.
        out_dir (str): Output folder.
        num_batches (int): ``K``. Defaults to 8.
        cfg_options (dict, optional): Overrides merged into the config (e.g. ``data_root``).
        mode (str): ``'loss'`` (training forward) or ``'predict'``. Defaults to ``'loss'``.
        seed (int): Seed of the dataloader (shuffling). Defaults to 0.
        device (str): Defaults to ``'cpu'``.
        prefix (str): File name prefix. Defaults to ``'alignment_iou'``.

    Returns:
        dict: See :func:`write_alignment_report`, plus ``alignment`` (the per-layer results).
    """
    from .collect import build_model
    model = build_model(config, checkpoint, cfg_options, device=device)
    alignment = _collect_from_config(model, config, num_batches, cfg_options, mode, seed)
    report = write_alignment_report(
        alignment, out_dir, prefix,
        title=f'PWLU alignment IoU, {osp.basename(checkpoint)}, {num_batches} batches')
    report['alignment'] = alignment
    return report


def write_report_figures(config_path: str, checkpoint_path: str, out_dir: str,
                         num_batches: int = 4, cfg_options: Optional[dict] = None,
                         layers: Optional[str] = None, num_channels: int = 4) -> dict:
    """The activation plot and the alignment-IoU histogram of a trained model (quick start).

    Builds the model once, draws every PWLU (``pwlu_curves.png``) and runs ``num_batches``
    training batches for the IoU report (``alignment_iou.png``, ``alignment_iou.csv``,
    ``alignment_iou_channels.csv``), all in ``out_dir``. The model's state is not changed.

    Args:
        config_path (str): Config of the run (e.g. the one dumped into its work dir, which
            holds the command line's ``--cfg-options``).
        checkpoint_path (str): Its checkpoint.
        out_dir (str): Output folder (created).
        num_batches (int): Training batches for the statistics. Defaults to 4.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to None.
        layers (str, optional): Regex selecting the layers to draw. Defaults to None (all).
        num_channels (int): Channels drawn per layer. Defaults to 4.

    Returns:
        dict: ``curves`` (activation plot), ``histogram``, ``csv``, ``channel_csv`` (paths),
        ``mean_iou`` (float) and ``stages`` (``{stage: (mean IoU, fraction outside)}``).
    """
    from .collect import build_model
    model = build_model(config_path, checkpoint_path, cfg_options)
    pwlu = filter_layers(OrderedDict(find_pwlu_layers(model)), layers)
    curves = osp.join(out_dir, 'pwlu_curves.png')
    plot_pwlu_curves(pwlu, curves, num_channels=num_channels,
                     title=f'Learned PWLU functions, {osp.basename(checkpoint_path)}')
    alignment = _collect_from_config(model, config_path, num_batches, cfg_options, 'loss', 0)
    report = write_alignment_report(
        alignment, out_dir,
        title=f'PWLU alignment IoU, {osp.basename(checkpoint_path)}, {num_batches} batches')
    report['curves'] = curves
    return report
