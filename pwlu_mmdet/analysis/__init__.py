"""Analysis of trained PWLU models: learned curves (Figure 7) and alignment IoU (Figure 6).

Importing this package needs torch only (mmengine to read mmengine checkpoints); matplotlib is
imported when a figure is drawn and mmdet when a config is built.

* :func:`load_pwlu_layers`, :func:`sample_curves`, :func:`plot_pwlu_curves`: the learned functions.
* :class:`InputStatistics` and the other run-time measurements of
  :mod:`pwlu_mmdet.layers.statistics` (shared with :class:`pwlu_mmdet.engine.PWLUHook`),
  re-exported here.
* :func:`collect_alignment`, :func:`write_alignment_report`, :func:`run_alignment_iou`: the
  Eq. 7 IoU histogram and CSVs.
* :func:`write_report_figures`: both figures for a config + checkpoint (the quick start's).
"""
from ..layers.statistics import (InputStatistics, LayerAlignment, find_pwlu_layers, stage_name,
                                 summarize_stages)
from .collect import build_model, build_train_dataloader, collect_alignment, load_config
from .curves import (curve_grid, filter_layers, load_pwlu_layers, load_state_dict,
                     plot_pwlu_curves, pwlu_layers_from_state_dict, sample_curves, save_figure,
                     select_channels)
from .report import (CHANNEL_CSV_FIELDS, LAYER_CSV_FIELDS, channel_rows, layer_rows, mean_iou,
                     plot_iou_histogram, run_alignment_iou, write_alignment_report, write_csv,
                     write_report_figures)

__all__ = [
    'build_model', 'build_train_dataloader', 'collect_alignment', 'load_config', 'curve_grid',
    'filter_layers', 'load_pwlu_layers', 'load_state_dict', 'plot_pwlu_curves',
    'pwlu_layers_from_state_dict', 'sample_curves', 'save_figure', 'select_channels',
    'CHANNEL_CSV_FIELDS', 'LAYER_CSV_FIELDS', 'channel_rows', 'layer_rows', 'mean_iou',
    'plot_iou_histogram', 'run_alignment_iou', 'write_alignment_report', 'write_csv',
    'write_report_figures', 'InputStatistics', 'LayerAlignment', 'find_pwlu_layers',
    'stage_name', 'summarize_stages'
]
