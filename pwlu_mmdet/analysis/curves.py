"""Learned PWLU functions: load the layers of a checkpoint, sample and plot their curves.

The paper's Figure 7. Needs torch only (mmengine, when installed, to read mmengine checkpoints;
mmdet only with a config); matplotlib is imported inside :func:`plot_pwlu_curves`.
Curves are sampled with the layer's own forward in eval mode, so they are exactly what the model
computes; without the compiled op the layer uses its pure-torch table form.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..layers import PWLU, find_pwlu_layers

__all__ = ['load_state_dict', 'pwlu_layers_from_state_dict', 'load_pwlu_layers', 'filter_layers',
           'select_channels', 'sample_curves', 'curve_grid', 'plot_pwlu_curves', 'save_figure']

_STATE_KEYS = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope', 'running_mean',
               'running_std', 'num_batches_tracked', 'phase')


def load_state_dict(checkpoint: str) -> Dict[str, torch.Tensor]:
    """The model state dict of a checkpoint file (mmengine's format or a plain state dict).

    mmengine's loader is used when available, accepting what mmengine checkpoints hold under
    ``weights_only=True`` (:func:`pwlu_mmdet.utils.checkpoint.mmengine_checkpoint_globals`); a
    ``module.`` prefix (DDP) is removed.

    Args:
        checkpoint (str): Path (or any URL mmengine's ``CheckpointLoader`` understands).

    Returns:
        dict[str, Tensor]: The state dict.
    """
    try:
        from mmengine.runner import CheckpointLoader

        from ..utils.checkpoint import mmengine_checkpoint_globals
    except ImportError:
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    else:
        with mmengine_checkpoint_globals():
            ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in state.items())


def pwlu_layers_from_state_dict(state_dict: Dict[str, torch.Tensor]
                                ) -> 'OrderedDict[str, PWLU]':
    """Rebuild every PWLU of a state dict as a stand-alone layer (no model, no config).

    A PWLU is recognised by its nine state entries (``points`` ... ``phase``). ``N`` and the
    number of sets come from the shape of ``points``; one set is rebuilt layer-wise (identical
    math). Hyperparameters that are not in the state (``sigma``, ``range_eps``) take their
    defaults; pass the config to :func:`load_pwlu_layers` to get the model's own layers.

    Args:
        state_dict (dict[str, Tensor]): A model state dict.

    Returns:
        OrderedDict[str, PWLU]: ``{module name: layer}`` in state-dict order, eval mode.
    """
    layers = OrderedDict()
    for key in state_dict:
        if not key.endswith('.points') and key != 'points':
            continue
        prefix = key[:-len('points')]
        if not all(prefix + k in state_dict for k in _STATE_KEYS):
            continue
        sets, n_plus_1 = state_dict[key].shape
        layer = PWLU(sets if sets > 1 else None, num_intervals=n_plus_1 - 1,
                     mode='channel' if sets > 1 else 'layer')
        layer.load_state_dict({k: state_dict[prefix + k] for k in _STATE_KEYS})
        layers[prefix.rstrip('.')] = layer.eval()
    return layers


def load_pwlu_layers(checkpoint: str,
                     config: Optional[str] = None,
                     pattern: Optional[str] = None,
                     cfg_options: Optional[dict] = None) -> 'OrderedDict[str, PWLU]':
    """The PWLU layers of a checkpoint, optionally those whose name matches ``pattern``.

    Args:
        checkpoint (str): Checkpoint file.
        config (str, optional): Model config. When given, the model is built (mmdet needed)
            and the checkpoint loaded into it, so the layers carry the config's hyperparameters;
            otherwise they are rebuilt from the state dict alone. Defaults to None.
        pattern (str, optional): Regular expression searched (``re.search``) in each layer
            name, e.g. ``'backbone'`` or ``r'layer4\\.1\\.act2$'``. Defaults to None (all).
        cfg_options (dict, optional): Overrides merged into the config. Defaults to None.

    Returns:
        OrderedDict[str, PWLU]: ``{module name: layer}`` in module order.
    """
    if config is None:
        layers = pwlu_layers_from_state_dict(load_state_dict(checkpoint))
    else:
        from .collect import build_model
        model = build_model(config, checkpoint, cfg_options=cfg_options)
        layers = OrderedDict(find_pwlu_layers(model))
    return filter_layers(layers, pattern)


def filter_layers(layers: Dict[str, PWLU], pattern: Optional[str]) -> 'OrderedDict[str, PWLU]':
    """The layers whose name contains a match of the regex ``pattern`` (all when None)."""
    if pattern is None:
        return OrderedDict(layers)
    regex = re.compile(pattern)
    return OrderedDict((k, v) for k, v in layers.items() if regex.search(k))


def select_channels(num_sets: int, num: int = 4) -> list:
    """``num`` channel indices spread evenly over ``[0, num_sets)`` (all when fewer)."""
    if num_sets <= num:
        return list(range(num_sets))
    if num <= 1:
        return [0]
    return sorted({round(i * (num_sets - 1) / (num - 1)) for i in range(num)})


@torch.no_grad()
def sample_curves(layer: PWLU, x: torch.Tensor) -> torch.Tensor:
    """``y = layer(x)`` for every parameter set at the points ``x``, with the layer's forward.

    The layer runs in eval mode (its mode is restored afterwards), so no statistics are updated.

    Args:
        layer (PWLU): The layer.
        x (Tensor): 1-D sample points, shape ``(M,)``.

    Returns:
        Tensor: ``(M, S)`` float32 values, one column per parameter set ``S``.
    """
    p = layer.points
    sets = layer.num_channels if layer.mode == 'channel' else 1
    inp = x.to(device=p.device, dtype=p.dtype).reshape(-1, 1).expand(-1, sets).contiguous()
    was_training = layer.training
    layer.eval()
    try:
        y = layer(inp)
    finally:
        layer.train(was_training)
    return y.float().cpu()


def curve_grid(left: torch.Tensor, right: torch.Tensor, channels: Sequence[int],
               num_points: int = 401, margin: float = 0.25) -> torch.Tensor:
    """Sample points covering the learnable ranges of ``channels`` and the median range.

    Args:
        left (Tensor): ``B_L`` per set.
        right (Tensor): ``B_R`` per set.
        channels (Sequence[int]): The sets that are drawn.
        num_points (int): Number of points. Defaults to 401.
        margin (float): Extra width on each side, relative to the covered width. Defaults to 0.25.

    Returns:
        Tensor: ``(num_points,)`` float64, the range's ends and every drawn ``B_L``/``B_R`` are
        included exactly (so the kinks and the outer lines are drawn where they are).
    """
    left, right = left.double().cpu(), right.double().cpu()
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    ends = torch.cat([left[idx], right[idx], left.median().reshape(1), right.median().reshape(1)])
    lo, hi = ends.min().item(), ends.max().item()
    pad = margin * max(hi - lo, 1e-6)
    grid = torch.linspace(lo - pad, hi + pad, num_points, dtype=torch.float64)
    return torch.unique(torch.cat([grid, ends]))


def plot_pwlu_curves(layers: Dict[str, PWLU],
                     out_file: Optional[str] = None,
                     num_channels: int = 4,
                     num_points: int = 401,
                     ncols: Optional[int] = None,
                     panel_size: Tuple[float, float] = (2.6, 2.2),
                     title: Optional[str] = None):
    """Draw the learned function of every layer, one panel per layer (the paper's Figure 7).

    Channel-wise layers show ``num_channels`` channels (spread over the channel index) and the
    pointwise median over all channels (black); layer-wise layers their single function. ReLU is
    dashed grey for reference; the learnable range ``[B_L, B_R]`` is marked by dots at each
    drawn channel's ends and the median range is shaded. Phase-I layers compute ReLU and say so
    in their title.

    Args:
        layers (dict[str, PWLU]): ``{name: layer}``, e.g. from :func:`load_pwlu_layers`.
        out_file (str, optional): Where to save the figure (format from the extension).
            Defaults to None (not saved).
        num_channels (int): Channels drawn per channel-wise layer. Defaults to 4.
        num_points (int): Sample points per curve. Defaults to 401.
        ncols (int, optional): Panels per row. Defaults to ``ceil(sqrt(#layers))`` (at most 6).
        panel_size (tuple[float, float]): Size of one panel in inches. Defaults to (2.6, 2.2).
        title (str, optional): Figure title. Defaults to None.

    Returns:
        tuple[Figure, OrderedDict]: The matplotlib figure and, per layer, a dict with ``x``
        (sample points), ``y`` (``(M, S)`` values of every set), ``channels`` (the drawn sets),
        ``median`` (``(M,)``), ``left_bound`` and ``right_bound`` (per set).
    """
    import math

    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    if not layers:
        raise ValueError('plot_pwlu_curves: no PWLU layer to plot')
    n = len(layers)
    ncols = ncols or min(6, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
    curves = OrderedDict()
    for ax, (name, layer) in zip(axes.flat, layers.items()):
        left, right = (t.detach().float().cpu() for t in layer.valid_range())
        channels = select_channels(left.numel(), num_channels)
        x = curve_grid(left, right, channels, num_points)
        y = sample_curves(layer, x)
        median = y.quantile(0.5, dim=1) if y.shape[1] > 1 else y[:, 0]
        xs = x.float().numpy()
        ax.plot(xs, torch.relu(x).numpy(), '--', color='0.6', lw=1, label='ReLU', gid='relu')
        if y.shape[1] > 1:
            for k, c in enumerate(channels):
                color = colors[k % len(colors)]
                ax.plot(xs, y[:, c].numpy(), color=color, lw=1, alpha=0.85, label=f'ch {c}',
                        gid=f'channel-{c}')
                ends = torch.stack([left[c], right[c]]).double()
                ax.plot(ends.float().numpy(), sample_curves(layer, ends)[:, c].numpy(), 'o',
                        color=color, ms=3, gid=f'range-{c}')
            ax.plot(xs, median.numpy(), color='k', lw=1.8, label='median', gid='median')
            lo, hi = left.median().item(), right.median().item()
        else:
            ax.plot(xs, y[:, 0].numpy(), color='k', lw=1.8, label='PWLU', gid='layer')
            lo, hi = left[0].item(), right[0].item()
        ax.axvspan(lo, hi, color='tab:blue', alpha=0.08, lw=0, label='[B_L, B_R]')
        phase = '' if layer.realigned else ' (phase I: ReLU)'
        ax.set_title(f'{name}{phase}', fontsize=7)
        ax.tick_params(labelsize=6)
        curves[name] = dict(x=x, y=y, channels=channels, median=median, left_bound=left,
                            right_bound=right)
    for ax in list(axes.flat)[n:]:
        ax.axis('off')
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[0].legend(handles, labels, fontsize=5, loc='upper left')
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if out_file is not None:
        save_figure(fig, out_file)
    return fig, curves


def save_figure(fig, out_file: str, dpi: int = 120) -> str:
    """Save a matplotlib figure, creating the folder; returns ``out_file``."""
    folder = os.path.dirname(os.path.abspath(out_file))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out_file, dpi=dpi)
    return out_file
