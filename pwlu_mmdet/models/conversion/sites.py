"""Finding a model's activation sites with one forward.

A site is one place where a hidden activation is applied to the output of one layer. The tracer
runs the model once with hooks on every module and a torch-function mode, and records each call
of an activation (a module such as ``nn.ReLU`` or a function such as ``F.relu``): the code
position that made it, the module instance whose method made it, the layer that produced its
input, the input's shape, and whether any layer consumed its output. :func:`group_sites` turns
the calls into sites (docs/models.md, "How conversion works").
"""
import dataclasses
import os.path as osp
import sys
from collections import defaultdict
from types import CodeType, FrameType
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ...layers import APL, PAU, PWLU, ChannelPReLU, FReLU
from ...layers.factory import Swish

__all__ = ['ActivationCall', 'Site', 'trace_activations', 'group_sites', 'is_activation_module']

# Hidden-unit activations that conversion replaces. Gates (sigmoid, hard sigmoid, tanh) are not
# among them: they scale another tensor rather than feed a layer.
_TORCH_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardswish,
                      nn.Mish)
# The functions behind them, by name (F.relu, torch.relu, Tensor.relu_ ... all have these).
FUNCTIONAL_ACTIVATIONS = {
    'relu': nn.ReLU, 'relu_': nn.ReLU, 'relu6': nn.ReLU6, 'silu': nn.SiLU, 'gelu': nn.GELU,
    'leaky_relu': nn.LeakyReLU, 'leaky_relu_': nn.LeakyReLU, 'elu': nn.ELU, 'elu_': nn.ELU,
    'hardswish': nn.Hardswish, 'mish': nn.Mish
}
# Functions that apply a layer with weights given as arguments: their input is consumed.
_FUNCTIONAL_LAYERS = frozenset(('conv1d', 'conv2d', 'conv3d', 'conv_transpose1d',
                                'conv_transpose2d', 'conv_transpose3d', 'linear'))
# This project's layers: already sites; their internal relu calls are not.
_OWN_ACTIVATIONS = (PWLU, FReLU, APL, PAU, ChannelPReLU, Swish)
_TORCH_DIR = osp.dirname(torch.__file__) + osp.sep
# Frames between an activation call and the code that made it.
_CALL_MACHINERY = tuple(
    osp.join(_TORCH_DIR, *parts)
    for parts in (('nn', 'modules', 'module.py'), ('nn', 'functional.py'), ('overrides.py', )))


def _mmcv_activations() -> tuple:
    try:
        from mmcv.cnn.bricks import HSwish
        from mmcv.cnn.bricks import Swish as MMCVSwish
    except ImportError:  # mmcv without its bricks: torch's classes only
        return ()
    return (MMCVSwish, HSwish)


STOCK_ACTIVATIONS = _TORCH_ACTIVATIONS + _mmcv_activations()


def is_activation_module(module: nn.Module) -> bool:
    """Whether ``module`` is a stock hidden-unit activation that conversion replaces."""
    return isinstance(module, STOCK_ACTIVATIONS) and not isinstance(module, _OWN_ACTIVATIONS)


Position = Tuple[int, int, int, int]  # lineno, end_lineno, col_offset, end_col_offset


@dataclasses.dataclass
class ActivationCall:
    """One call of an activation during the trace."""
    module: Optional[nn.Module]  # the activation module, None for a function
    function: Optional[str]  # the function's name (``relu``, ``gelu`` ...), None for a module
    kwargs: dict  # the function's keyword arguments (``inplace``, ``negative_slope`` ...)
    code: Optional[CodeType]  # the code that made the call (None: inside torch, e.g. Sequential)
    position: Optional[Position]
    owner: Optional[nn.Module]  # ``self`` of that code
    invocation: int  # which run of that code (one per call of the function that holds it)
    producer: Optional[nn.Module]  # innermost module that returned the input, if any
    layer: Optional[nn.Module]  # the last conv / linear (a weighted layer, not a norm) run before
    shape: Tuple[int, ...]
    # The output's autograd node when it was returned (None: no output seen or no graph).
    node: Optional[object] = None
    # The function (``conv2d``, ``linear`` ...) whose output the input is, where that is a
    # dynamic layer (weights computed from the image, e.g. CondInst's mask head): its width is
    # instances x channels, not a fixed width. Empty otherwise.
    dynamic: str = ''

    @property
    def in_torch(self) -> bool:
        """Whether torch's own code made the call (e.g. ``nn.Sequential.forward``)."""
        return self.code is not None and self.code.co_filename.startswith(_TORCH_DIR)


@dataclasses.dataclass
class Site:
    """A place that gets one activation layer (or, for a loop, one per iteration).

    Attributes:
        calls (list[ActivationCall]): The traced calls, in order.
        count (int): Layers the site needs: 1, or the calls per run of a loop.
        channels (list[int]): Channel count per layer.
        channel_axis (int): 1 for ``(N, C, ...)`` maps, -1 for channels-last tokens.
        consumed (bool): Whether a layer consumed the output (False: an output clamp).
        loop (bool): Whether the call sits in a loop whose iterations feed different layers.
        dynamic (bool): Whether a dynamic conv or linear produced the input.
    """
    calls: List[ActivationCall]
    count: int
    channels: List[int]
    channel_axis: int
    consumed: bool
    loop: bool
    dynamic: bool = False

    @property
    def first(self) -> ActivationCall:
        return self.calls[0]

    @property
    def source(self) -> str:
        call = self.first
        if call.code is None:
            return '<torch>'
        return f'{call.code.co_filename}:{call.position[0]}'


def _caller_frame(start: FrameType) -> Optional[FrameType]:
    frame = start
    while frame is not None and frame.f_code.co_filename in _CALL_MACHINERY + (__file__, ):
        frame = frame.f_back
    return frame


def _frame_position(frame: FrameType) -> Position:
    index = frame.f_lasti // 2
    for i, pos in enumerate(frame.f_code.co_positions()):
        if i == index:
            return pos
    raise RuntimeError(f'no position for instruction {frame.f_lasti} of {frame.f_code}')


def _flatten_tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _flatten_tensors(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _flatten_tensors(item, out)
    return out


class _Tracer(TorchFunctionMode):
    """Records activation calls; see :func:`trace_activations`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model_modules = {id(m) for m in model.modules()}
        self.parameters = {id(p) for p in model.parameters()}
        self.buffers = {id(b) for b in model.buffers()}
        self.dynamic_outputs: Dict[int, str] = {}  # outputs of dynamic layers: their function
        self.calls: List[ActivationCall] = []
        self.producers: Dict[int, nn.Module] = {}
        self.layer_inputs: List[torch.Tensor] = []
        self.keep: List[object] = []  # keeps traced tensors and frames alive: ids stay unique
        self.inside = 0  # depth of activation modules being run
        self.last_layer: Optional[nn.Module] = None
        self.invocations: Dict[int, int] = {}

    def _invocation(self, frame: FrameType) -> int:
        key = id(frame)
        if key not in self.invocations:
            self.invocations[key] = len(self.invocations)
            self.keep.append(frame)
        return self.invocations[key]

    def _record(self, module, function, kwargs, x):
        frame = _caller_frame(sys._getframe(2))
        code = position = owner = None
        invocation = -1
        if frame is not None:
            code, position = frame.f_code, _frame_position(frame)
            owner = _owner(frame)
            invocation = self._invocation(frame)
        self.keep.append(x)
        call = ActivationCall(module, function, kwargs, code, position, owner, invocation,
                              self.producers.get(id(x)), self.last_layer, tuple(x.shape),
                              dynamic=self.dynamic_outputs.get(id(x), ''))
        self.calls.append(call)
        return call

    def _computed_from_input(self, weight) -> bool:
        """Whether a functional layer's weight was computed from the traced input (a dynamic
        conv), rather than being a parameter or buffer or computed from parameters alone
        (weight standardization). Post-processing detaches what it computes from the input
        (CondInst's and RTMDet-Ins' kernels): a weight without history that the model does not
        hold is taken as computed from it."""
        if not isinstance(weight, torch.Tensor) or id(weight) in self.parameters:
            return False
        if weight.grad_fn is None:
            return id(weight) not in self.buffers
        for node in _graph_nodes([weight.grad_fn]):  # back to the leaves: parameters, input
            leaf = getattr(node, 'variable', None)
            if leaf is not None and id(leaf) not in self.parameters:
                return True
        return False

    def pre_hook(self, module, args):
        if id(module) not in self.model_modules:
            return
        own = isinstance(module, _OWN_ACTIVATIONS)
        if is_activation_module(module) and not self.inside and args:
            call = self._record(module, None, {}, args[0])
            module._pwlu_trace_call = call
        if own or is_activation_module(module):
            self.inside += 1
        elif any(True for _ in module.parameters(recurse=False)):
            self.layer_inputs.extend(_flatten_tensors(args, []))

    def hook(self, module, args, output):
        if id(module) not in self.model_modules:
            return
        if isinstance(module, _OWN_ACTIVATIONS) or is_activation_module(module):
            self.inside -= 1
            call = module.__dict__.pop('_pwlu_trace_call', None)
            if call is not None and isinstance(output, torch.Tensor):
                call.node = output.grad_fn
        elif _is_weighted_layer(module):
            self.last_layer = module
        for tensor in _flatten_tensors(output, []):
            if id(tensor) not in self.producers:  # the innermost module that returned it
                self.producers[id(tensor)] = module
                self.keep.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, '__name__', None)
        if name in _FUNCTIONAL_LAYERS and not self.inside:  # e.g. dynamic convs (CondInst)
            self.layer_inputs.extend(_flatten_tensors(args[:1], []))
            weight = args[1] if len(args) > 1 else kwargs.get('weight')
            if isinstance(out, torch.Tensor) and self._computed_from_input(weight):
                self.dynamic_outputs[id(out)] = name
                self.keep.append(out)
        if (not self.inside and name in FUNCTIONAL_ACTIVATIONS and args
                and isinstance(args[0], torch.Tensor)):
            call = self._record(None, name, dict(kwargs, **_positional_kwargs(name, args)),
                                args[0])
            if isinstance(out, torch.Tensor):
                call.node = out.grad_fn
        return out


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_weighted_layer(module: nn.Module) -> bool:
    return (not isinstance(module, _NORMS)
            and any(True for _ in module.parameters(recurse=False)))


def _owner(frame: FrameType) -> Optional[nn.Module]:
    # ``self`` of the method, of the method around a nested function (a closure variable), or
    # of the function around a comprehension that does not use it.
    while frame is not None:
        owner = frame.f_locals.get('self')
        if isinstance(owner, nn.Module):
            return owner
        if not frame.f_code.co_name.startswith('<'):
            return None
        frame = frame.f_back
    return None


def _positional_kwargs(name: str, args: tuple) -> dict:
    # F.relu(x, True), F.leaky_relu(x, 0.1), F.gelu(x, approximate) written positionally.
    extra = dict(leaky_relu=('negative_slope', 'inplace'), leaky_relu_=('negative_slope', ),
                 elu=('alpha', 'inplace'), relu=('inplace', ), relu6=('inplace', ),
                 silu=('inplace', ), hardswish=('inplace', ), mish=('inplace', ))
    return dict(zip(extra.get(name, ()), args[1:]))


def trace_activations(model: nn.Module, run: Callable[[], object]
                      ) -> Tuple[List[ActivationCall], set]:
    """Run ``run()`` once and record every activation call of ``model``.

    Returns:
        tuple[list[ActivationCall], set]: The calls, and the autograd nodes that feed a layer
        with parameters (used to tell hidden activations from output clamps).
    """
    tracer = _Tracer(model)
    handles = [nn.modules.module.register_module_forward_pre_hook(tracer.pre_hook),
               nn.modules.module.register_module_forward_hook(tracer.hook)]
    try:
        with tracer:
            run()
    finally:
        for handle in handles:
            handle.remove()
        for module in model.modules():
            module.__dict__.pop('_pwlu_trace_call', None)
    feeding = _nodes_feeding(tracer.layer_inputs)
    tracer.keep.clear()
    return tracer.calls, feeding


def _nodes_feeding(inputs: List[torch.Tensor]) -> set:
    return set(_graph_nodes(t.grad_fn for t in inputs))


def _graph_nodes(roots: Iterable) -> Iterator:
    """Every autograd node that ``roots`` reach backwards (themselves included), once each."""
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(next_node for next_node, _ in node.next_functions)


def _channel_axis(call: ActivationCall) -> int:
    # Tokens (B, L, C) from a Linear are channels-last; maps, rows and Conv1d outputs are not.
    if len(call.shape) <= 2:
        return 1
    if call.dynamic:
        return -1 if call.dynamic == 'linear' else 1
    for module in (call.producer, call.layer):
        if isinstance(module, nn.Linear):
            return -1
        if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase,
                               nn.GroupNorm)):
            return 1
    return -1 if len(call.shape) == 3 else 1


def group_sites(calls: List[ActivationCall], feeding: set,
                in_loop: Callable[[ActivationCall], bool]) -> List[Site]:
    """Group traced calls into sites.

    Calls of one code position by one owner are one site, unless the position sits in a loop
    (``in_loop``) that does not feed it from one and the same layer: then the k-th call of each
    run is site k (a ``ModuleList``). Calls made from inside torch (an
    ``nn.Sequential``) are grouped by module.

    Raises:
        ValueError: A site whose calls disagree on their channel count or axis.
    """
    groups: Dict[tuple, List[ActivationCall]] = defaultdict(list)
    for call in calls:
        if call.code is None or (call.in_torch and call.module is not None):
            key = ('module', id(call.module))
        else:
            key = (id(call.code), call.position, id(call.owner),
                   id(call.module) if call.module is not None else call.function)
        groups[key].append(call)
    sites = []
    for key, group in groups.items():
        runs: Dict[int, List[ActivationCall]] = defaultdict(list)
        for call in group:
            runs[call.invocation].append(call)
        # Several calls per run from one layer (one conv applied to a list of maps) are one
        # site; otherwise a call in a loop is a site per iteration, even where it runs once.
        shared = (len(group) > len(runs) and all(c.producer is not None for c in group)
                  and len({id(c.producer) for c in group}) == 1)
        loop = key[0] != 'module' and not group[0].in_torch and in_loop(group[0]) and not shared
        per_run = [len(run) for run in runs.values()]
        if loop and len(set(per_run)) != 1:
            raise ValueError(f'{_where(group[0])}: a loop that runs {sorted(set(per_run))} '
                             'times in different calls; its sites cannot be numbered')
        count = per_run[0] if loop else 1
        dynamic = any(bool(c.dynamic) for c in group)
        channels = []
        axes = set()
        for k in range(count):
            members = [run[k] for run in runs.values()] if loop else group
            axis = {_channel_axis(c) for c in members}
            width = {c.shape[next(iter(axis))] if c.shape else 0 for c in members}
            axes |= axis
            if dynamic:  # instances x channels: the width of the first call, for the report
                width = {next(iter(width))}
            if len(width) != 1 or len(axis) != 1:
                raise ValueError(f'{_where(group[0])}: one site sees inputs of shapes '
                                 f'{sorted({c.shape for c in members})}')
            channels.append(width.pop())
        consumed = any(c.node is None or c.node in feeding for c in group)
        sites.append(Site(group, count, channels, axes.pop(), consumed, loop, dynamic))
    return sites


def _where(call: ActivationCall) -> str:
    if call.code is None:
        return 'an activation module run by torch'
    return f'{call.code.co_filename}:{call.position[0]}'
