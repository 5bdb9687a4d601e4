"""``convert_activations``: every hidden activation site of a built model gets its own layer.

How it works (docs/models.md): small traced forwards find the sites (:mod:`.sites`); a site that
is a module called once is replaced where it is; a module called at several lines or in a loop
over different layers, and a functional call, get new modules on the module whose method makes
the call, and that method is rewritten to call them (:mod:`.rewrite`). Output clamps (an
activation whose output no layer consumes) and frozen layers keep their stock activation.
"""
import contextlib
import copy
import dataclasses
import fnmatch
import inspect
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..activation import act_class, build_site_act
from .report import REPORT_ATTR, ConversionReport, ConvertedAway, SiteEntry, converted_sites
from .rewrite import (MethodRef, call_node, converted_class, find_method, in_loop, numbered_calls,
                      rewrite_method)
from .sites import (FUNCTIONAL_ACTIVATIONS, Site, group_sites, is_activation_module,
                    trace_activations)
from .trace_inputs import detector_runs, input_runs, untouched

__all__ = ['convert_activations']


# ---------------------------------------------------------------------------------- planning
@dataclasses.dataclass
class _Plan:
    site: Site
    kind: str
    owner_path: str
    name: Optional[str]  # None: dropped (legacy names only)
    in_place_path: Optional[str]  # set for module sites replaced where they are
    method: Optional[MethodRef]  # the method that makes the call, where it is known
    action: str = 'converted'
    error: Optional[str] = None  # why the site cannot be converted (unless it is kept)

    def paths(self) -> List[str]:
        """The paths of the site's layers once converted (none for a dropped call or a site
        that cannot be converted)."""
        if self.in_place_path is None and self.name is None:
            return []
        base = self.in_place_path or _join(self.owner_path, self.name)
        return [f'{base}.{i}' for i in range(self.site.count)] if self.site.loop else [base]

    def stock_path(self, paths: Dict[int, str]) -> str:
        """Where the stock activation is: its module, or the module that calls the function."""
        return paths.get(id(self.site.first.module), self.owner_path)


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix else name


def _stock_name(site: Site) -> str:
    call = site.first
    return type(call.module).__name__ if call.module is not None else f'F.{call.function}'


def _matches(path: str, pattern: str) -> bool:
    return path == pattern or path.startswith(pattern + '.') or fnmatch.fnmatchcase(path, pattern)


def _frozen(site: Site) -> bool:
    """Whether the weighted layer that feeds the site (the conv or linear before it; a norm may
    be frozen alone, as caffe-style backbones do) has no trainable parameter."""
    layer = site.first.layer
    return layer is not None and not any(p.requires_grad for p in layer.parameters(recurse=False))


class _SiteError(ValueError):
    pass


def _site_error(site: Site, problem: str, path: str = '') -> _SiteError:
    return _SiteError(f'convert_activations: {_stock_name(site)} at {site.source}: {problem}. '
                      f"Exclude the site (exclude=['{path}']) to keep it stock.")


def _numbering(call) -> Tuple[Optional[int], int]:
    """The call's static number in its owner's class, and how many calls there use the same
    module attribute or function (the table is cached per class and attribute set)."""
    attrs = frozenset(n for n, m in call.owner._modules.items()
                      if m is not None and is_activation_module(m))
    table = numbered_calls(type(call.owner), attrs)
    number, key = table.get((call.code.co_filename, call.position), (None, None))
    return number, sum(1 for _, k in table.values() if k == key)


def _method(call) -> Optional[MethodRef]:
    if call.code is None or call.owner is None or call.in_torch:
        return None
    return find_method(type(call.owner), call.code)


def _plan_site(site: Site, method: Optional[MethodRef], module_uses: int,
               paths: Dict[int, str], names: dict) -> _Plan:
    call = site.first
    where = paths.get(id(call.module)) or paths.get(id(call.owner), '')
    table = names.get(method.cls.__name__, {}) if method is not None else {}
    number, static_uses = _numbering(call) if method is not None else (None, 1)
    if call.module is not None and module_uses == 1 and site.count == 1 and static_uses <= 1:
        # A module used once: replaced where it is, unless a name is asked for.
        path = paths.get(id(call.module))
        if path is None:
            raise _site_error(site, 'the module is not a submodule of the model', where)
        parent, _, leaf = path.rpartition('.')
        renamed = table.get(leaf, leaf)
        site.loop = False
        if renamed == leaf or method is None:
            return _Plan(site, 'module', parent, leaf, path, method)
        kind = 'module'
    else:
        if method is None:
            raise _site_error(site, 'it is called from torch code or outside a module method, '
                              'where it cannot be given a layer per call', where)
        resolved = getattr(type(call.owner), method.name, None)
        if resolved is None or inspect.unwrap(resolved) is not method.function:
            raise _site_error(site, f'{method.cls.__name__}.{method.name} runs through super() '
                              "from an override; only methods that the owner's class resolves "
                              'to can be rewritten', where)
        if number is None or call_node(call.code, call.position) is None:
            raise _site_error(site, 'its call expression is not found in the source', where)
        renamed = table.get(f'act{number}', f'act{number}')
        kind = 'loop' if site.loop else ('functional' if call.module is None else 'shared')
    owner_path = paths.get(id(call.owner))
    if owner_path is None:
        raise _site_error(site, 'the module whose method calls it is not in the model', where)
    return _Plan(site, kind, owner_path, renamed, None, method)


def _plan(model: nn.Module, sites: List[Site], names: Dict[str, Dict[str, Optional[str]]]
          ) -> List[_Plan]:
    paths = {id(m): p for p, m in model.named_modules()}
    module_uses = defaultdict(int)
    for site in sites:
        module_uses[id(site.first.module)] += site.first.module is not None
    plans = []
    for site in sites:
        try:
            plans.append(_plan_site(site, _method(site.first), module_uses[id(site.first.module)],
                                    paths, names))
        except _SiteError as error:
            plans.append(_Plan(site, 'unknown', paths.get(id(site.first.owner), ''), None, None,
                               None, error=str(error)))
    return plans


def _selected(paths: List[str], include, exclude) -> bool:
    if include is not None and not any(_matches(p, pat) for p in paths for pat in include):
        return False
    return not (exclude and any(_matches(p, pat) for p in paths for pat in exclude))


def _apply_options(plans: List[_Plan], unreached: List[str], include, exclude, frozen: str,
                   clamps: str, stock_paths: Dict[int, str]) -> List[str]:
    """Set each plan's action; returns the unreached modules that the options select."""
    for plan in plans:
        paths = plan.paths() + [plan.stock_path(stock_paths)]
        if plan.site.dynamic:
            plan.action = 'dynamic'
        elif clamps == 'keep' and not plan.site.consumed:
            plan.action = 'clamp'
        elif frozen == 'keep' and _frozen(plan.site):
            plan.action = 'frozen'
        elif not _selected(paths, include, exclude):
            plan.action = 'excluded'
    all_paths = [p for plan in plans for p in plan.paths() + [plan.stock_path(stock_paths)]]
    all_paths += unreached
    for option, patterns in (('include', include), ('exclude', exclude)):
        unmatched = [pat for pat in patterns or ()
                     if not any(_matches(p, pat) for p in all_paths)]
        if unmatched:
            raise ValueError(f'convert_activations: {option} patterns {unmatched} match no '
                             f'activation site; sites are e.g. {all_paths[:5]}')
    return [path for path in unreached if _selected([path], include, exclude)]


def _build_layer(act_cfg: Optional[dict], plan: _Plan, k: int) -> nn.Module:
    site = plan.site
    call = site.first
    if act_cfg is None:  # the stock activation, as a module of its own
        if call.module is not None:
            return copy.deepcopy(call.module)
        cls = FUNCTIONAL_ACTIVATIONS[call.function]
        params = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in call.kwargs.items() if k in params}
        if call.function.endswith('_') and 'inplace' in params:
            kwargs['inplace'] = True
        return cls(**kwargs)
    inplace = (bool(getattr(call.module, 'inplace', False)) if call.module is not None else
               bool(call.kwargs.get('inplace', False) or call.function.endswith('_')))
    cfg = dict(act_cfg)
    if site.channel_axis != 1 and site.first.shape and len(site.first.shape) > 2:
        cls = act_class(cfg)
        params = inspect.signature(cls).parameters
        if 'channel_axis' in params:
            cfg.setdefault('channel_axis', site.channel_axis)
        elif 'num_channels' in params:
            raise _site_error(site, f'its input is channels-last tokens {site.first.shape} and '
                              f'{cls.__name__} has no channel_axis', plan.paths()[0])
    return build_site_act(cfg, site.channels[k], inplace=inplace)


def _check_model(model: nn.Module) -> None:
    wrapped = isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
    with contextlib.suppress(ImportError):
        from mmengine.model import is_model_wrapper
        wrapped = wrapped or is_model_wrapper(model)
    if wrapped:
        raise TypeError('convert_activations: the model is wrapped in '
                        f'{type(model).__name__}; convert the bare model before wrapping it '
                        '(the mmengine Runner wraps it when it is built: set model.act_cfg in '
                        'the config instead)')
    if converted_sites(model) is not None:
        raise RuntimeError('convert_activations: the model (or a part of it) is already '
                           'converted; build it again to convert it to another activation')


def convert_activations(model: nn.Module,
                        act_cfg: Optional[dict],
                        *,
                        include: Optional[Sequence[str]] = None,
                        exclude: Optional[Sequence[str]] = None,
                        frozen: str = 'keep',
                        clamps: str = 'keep',
                        inputs=None,
                        trace_size: int = 64,
                        names: Optional[Dict[str, Dict[str, Optional[str]]]] = None
                        ) -> ConversionReport:
    """Give every hidden activation site of ``model`` its own layer built from ``act_cfg``.

    Converts in place a built model (any mmdet detector, or any module with ``inputs``): each
    site gets a layer with the site's channel count and channel axis. Stock activation modules
    called once keep their module path; the others get ``act1``, ``act2`` ... on the module
    whose method calls them, numbered in source order (docs/models.md). Output clamps and
    frozen layers keep their stock activation. Nothing changes when an error is raised.

    Args:
        model (nn.Module): The bare model (not wrapped in DDP).
        act_cfg (dict, optional): The activation of every site, e.g. ``dict(type='PWLU')``;
            ``num_channels``, ``channel_axis`` and ``inplace`` are filled in where the class
            takes them. None gives every site its own copy of its stock activation.
        include (Sequence[str], optional): Convert only sites whose path matches one of these
            (a module path prefix or an ``fnmatch`` pattern). Defaults to None (all).
        exclude (Sequence[str], optional): Keep the stock activation of matching sites.
        frozen (str): ``'keep'``: sites whose layer is frozen (``requires_grad=False``, e.g.
            ``frozen_stages``) keep their stock activation; ``'convert'``: convert them too.
            Defaults to ``'keep'``.
        clamps (str): ``'keep'``: sites whose output no layer of the traced forwards consumes
            keep their stock activation; ``'convert'``: convert them too (for a part of a
            model, whose outputs feed layers outside the trace). Defaults to ``'keep'``.
        inputs (Any, optional): Positional arguments of one trace forward; None for an mmdet
            detector: one ``trace_size`` image through ``_forward`` (tensor mode) and
            ``predict``.
        trace_size (int): Side of the detectors' trace image. Defaults to 64.
        names (dict, optional): Per class that defines the calling method, default site name
            -> name to use (None drops the call). Used to keep the ``Act*`` components' names.

    Returns:
        ConversionReport: One :class:`SiteEntry` per site.
    """
    for option, value in (('frozen', frozen), ('clamps', clamps)):
        if value not in ('keep', 'convert'):
            raise ValueError(f"convert_activations: {option} must be 'keep' or 'convert', got "
                             f'{value!r}')
    _check_model(model)
    if act_cfg is not None:
        build_site_act(act_cfg, 4)  # an unknown type or bad argument fails before any change
    attempts = (input_runs(model, inputs) if inputs is not None else
                detector_runs(model, trace_size))
    calls, feeding = _trace(model, attempts)
    sites = group_sites(calls, feeding, lambda c: in_loop(c.code, c.position))
    plans = _plan(model, sites, names or {})
    called = {id(call.module) for call in calls if call.module is not None}
    unreached = [path for path, m in model.named_modules()
                 if is_activation_module(m) and id(m) not in called]
    unreached = _apply_options(plans, unreached, include, exclude, frozen, clamps,
                               {id(m): p for p, m in model.named_modules()})
    errors = [p.error for p in plans if p.error is not None and p.action == 'converted']
    if errors:
        raise ValueError('\n'.join(errors))
    layers = {id(p): [_build_layer(act_cfg, p, k) for k in range(p.site.count)]
              for p in plans if p.action == 'converted' and p.name is not None}
    classes = _rewritten_classes(plans)
    report = _apply(model, plans, layers, classes, unreached)
    model.__dict__[REPORT_ATTR] = report
    return report


def _trace(model: nn.Module, attempts: List[List[Tuple[str, Callable[[], object]]]]):
    """The calls of every run of the first attempt in which any run succeeds, as one trace
    (tensor mode and ``predict``: a call that only one of them makes, or an output that only
    post-processing consumes, counts); the model's modes, its buffers and the global RNG are
    as before."""
    errors = []
    for attempt in attempts:
        calls, feeding, traced = [], set(), False
        for description, run in attempt:
            with untouched(model):
                try:
                    run_calls, run_feeding = trace_activations(model, run)
                except Exception as error:  # another way to run it may work
                    errors.append(f'{description}: {error!r}')
                    continue
            traced = True
            offset = 1 + max((c.invocation for c in calls), default=-1)
            for call in run_calls:  # invocations count per run: keep them apart
                if call.invocation >= 0:  # -1: made by torch's code, grouped by module
                    call.invocation += offset
            calls += run_calls
            feeding |= run_feeding
        if traced:
            return calls, feeding
    raise RuntimeError('convert_activations: the trace forward failed (' + '; '.join(errors)
                       + '); pass inputs=(...) or another trace_size')


def _rewritten_classes(plans: List[_Plan]) -> Dict[int, Tuple[nn.Module, type]]:
    """Per owner whose method calls are replaced: the owner and its new class."""
    specs: Dict[int, Dict[str, Tuple[MethodRef, dict]]] = defaultdict(dict)
    owners = {}
    for plan in plans:
        if plan.action != 'converted' or plan.in_place_path is not None:
            continue
        call = plan.site.first
        kind = 'drop' if plan.name is None else ('loop' if plan.site.loop else 'module')
        _, spec = specs[id(call.owner)].setdefault(plan.method.name, (plan.method, {}))
        spec[call.position] = (kind, plan.name, _join(plan.owner_path, plan.name or ''))
        owners[id(call.owner)] = call.owner
    return {key: (owners[key], converted_class(type(owners[key]), {
        name: rewrite_method(method, spec) for name, (method, spec) in per_method.items()}))
            for key, per_method in specs.items()}


def _apply(model, plans, layers, classes, unreached) -> ConversionReport:
    paths = {id(m): p for p, m in model.named_modules()}
    entries = []
    rewritten_modules: Dict[int, List[_Plan]] = defaultdict(list)
    for plan in plans:
        site, call = plan.site, plan.site.first
        new = layers.get(id(plan))
        if new is not None:
            if plan.in_place_path is not None:
                _set_module(model, plan.in_place_path, new[0])
            else:
                setattr(call.owner, plan.name, nn.ModuleList(new) if site.loop else new[0])
        if call.module is not None and plan.in_place_path is None:
            rewritten_modules[id(call.module)].append(plan)
        if plan.name is None and plan.error is None:
            continue  # a dropped call (names=...: None) is no site
        converted = plan.action == 'converted'
        site_paths = plan.paths() if converted else [plan.stock_path(paths)] * site.count
        for k, path in enumerate(site_paths):
            entries.append(SiteEntry(path, plan.kind, site.channels[k], site.channel_axis,
                                     _stock_name(site), site.source, plan.action))
    for owner, cls in classes.values():
        owner.__class__ = cls
    for module_plans in rewritten_modules.values():
        module = module_plans[0].site.first.module
        if all(p.action == 'converted' for p in module_plans) and id(module) in paths:
            names = ', '.join(p.name or '(dropped)' for p in module_plans)
            _set_guard(model, paths[id(module)],
                       ConvertedAway(module, paths[id(module)], f'was split into {names}'))
    for path in unreached:
        module = model.get_submodule(path)
        _set_guard(model, path, ConvertedAway(module, path, 'was never called by the trace '
                                              'forward'))
    return ConversionReport(entries, unreached)


def _set_guard(model: nn.Module, path: str, guard: ConvertedAway) -> None:
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    del parent._modules[name]
    setattr(parent, name, guard)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)
