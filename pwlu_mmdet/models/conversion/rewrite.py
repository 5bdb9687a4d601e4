"""Giving an activation call of a method its own module by rewriting the method's source.

mmdet calls one ``nn.ReLU`` at several lines (ResNet's blocks), in loops over different layers
(the box head's fcs) and as ``F.relu``. To give each such call a layer of its own, the method is
parsed from its file, each traced call expression is replaced by a call of the owner's new
attribute (``self.act2(x)``), and the method is compiled again with the file's name and line
numbers, so tracebacks and debuggers still show mmdet's source. The owner then gets a subclass
of its class that carries the rewritten methods; everything else (``train()``, ``with_cp``,
frozen stages, ``init_weights``) stays the stock class's.
"""
import ast
import copy
import functools
import inspect
import sys
from types import CodeType, FunctionType
from typing import Dict, List, Optional, Tuple

from torch import nn

__all__ = ['LoopSites', 'MethodRef', 'find_method', 'call_node', 'in_loop', 'numbered_calls',
           'rewrite_method', 'converted_class']

Position = Tuple[int, int, int, int]
_FUNCTIONAL_NAMES = frozenset(('relu', 'relu_', 'relu6', 'silu', 'gelu', 'leaky_relu',
                               'leaky_relu_', 'elu', 'elu_', 'hardswish', 'mish'))
_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class LoopSites:
    """The layers of an activation call in a loop, one per iteration, in order."""

    __slots__ = ('layers', 'index', 'where')

    def __init__(self, layers: nn.ModuleList, where: str) -> None:
        self.layers = layers
        self.index = 0
        self.where = where

    def __call__(self, x):
        if self.index >= len(self.layers):
            raise RuntimeError(
                f'{self.where}: this loop ran more than the {len(self.layers)} times that '
                'convert_activations traced, so it has no activation layer for this '
                'iteration; exclude the site to keep the stock activation there')
        layer = self.layers[self.index]
        self.index += 1
        return layer(x)


class _ParsedFile:

    def __init__(self, filename: str) -> None:
        with open(filename, encoding='utf-8') as f:
            self.tree = ast.parse(f.read(), filename)
        self.parents: Dict[ast.AST, ast.AST] = {}
        self.calls: Dict[Position, ast.Call] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Call):
                self.calls[_position(node)] = node


_FILES: Dict[str, _ParsedFile] = {}


def _parsed(filename: str) -> _ParsedFile:
    if filename not in _FILES:
        _FILES[filename] = _ParsedFile(filename)
    return _FILES[filename]


def _position(node: ast.AST) -> Position:
    return (node.lineno, node.end_lineno, node.col_offset, node.end_col_offset)


class MethodRef:
    """A method found from a code object: the class that defines it, its name, its function."""

    def __init__(self, cls: type, name: str, function: FunctionType) -> None:
        self.cls, self.name, self.function = cls, name, function

    @property
    def filename(self) -> str:
        return self.function.__code__.co_filename

    def node(self) -> ast.FunctionDef:
        parsed = _parsed(self.filename)
        code = self.function.__code__
        for node in ast.walk(parsed.tree):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.name == code.co_name
                    and min([node.lineno] + [d.lineno for d in node.decorator_list])
                    == code.co_firstlineno):
                return node
        raise LookupError(f'{self.filename}:{code.co_firstlineno}: source of '
                          f'{self.cls.__name__}.{self.name} not found')


def _codes(code: CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def find_method(owner_type: type, code: CodeType) -> Optional[MethodRef]:
    """The method of ``owner_type`` (or of a base class) whose body holds ``code``."""
    for cls in owner_type.__mro__:
        for name, attr in vars(cls).items():
            function = inspect.unwrap(attr) if callable(attr) else None
            if isinstance(function, FunctionType) and code in _codes(function.__code__):
                return MethodRef(cls, name, function)
    return None


def call_node(code: CodeType, position: Position) -> Optional[ast.Call]:
    """The call expression that ``position`` of ``code`` executes."""
    return _parsed(code.co_filename).calls.get(position)


def in_loop(code: CodeType, position: Position) -> bool:
    """Whether the call at ``position`` runs in a loop or comprehension of its function."""
    parsed = _parsed(code.co_filename)
    node = parsed.calls.get(position)
    while node is not None and not isinstance(node, _FUNCTIONS):
        node = parsed.parents.get(node)
        if isinstance(node, _LOOPS):
            return True
    return False


def _activation_call_key(node: ast.Call, self_name: str, module_attrs: frozenset
                         ) -> Optional[str]:
    """``relu`` for ``self.relu(x)`` (an activation module), ``F.relu`` for ``F.relu(x)``,
    ``x.relu()``, ``torch.relu(x)``; None for other calls."""
    func = node.func
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id == self_name:
            return func.attr if func.attr in module_attrs else None
        return f'F.{func.attr}' if func.attr in _FUNCTIONAL_NAMES else None
    if isinstance(func, ast.Name) and func.id in _FUNCTIONAL_NAMES:
        return f'F.{func.id}'
    return None


@functools.lru_cache(maxsize=None)
def numbered_calls(owner_type: type, module_attrs: frozenset
                   ) -> Dict[Tuple[str, Position], Tuple[int, str]]:
    """The activation calls in the methods of ``owner_type`` and its bases, numbered from 1.

    Bases come first, then source order: the numbers, and so the default names ``act1``,
    ``act2`` ..., depend on the classes' source, not on which calls a config makes run.
    ``module_attrs`` are the owner's attributes that hold activation modules.

    Returns:
        dict: ``(filename, position)`` -> ``(number, key)``, the key being the module's
        attribute name (``relu``) or the function (``F.relu``).
    """
    calls = set()
    for depth, cls in enumerate(reversed(owner_type.__mro__)):
        if cls.__module__ == __name__ or cls.__module__.startswith('torch.'):
            continue
        for attr in vars(cls).values():
            function = inspect.unwrap(attr) if callable(attr) else None
            if not isinstance(function, FunctionType):
                continue
            try:
                node = MethodRef(cls, function.__name__, function).node()
            except (LookupError, OSError, SyntaxError):
                continue
            self_name = node.args.args[0].arg if node.args.args else 'self'
            for sub in ast.walk(node):
                key = (_activation_call_key(sub, self_name, module_attrs)
                       if isinstance(sub, ast.Call) else None)
                if key is not None:
                    calls.add((depth, function.__code__.co_filename, _position(sub), key))
    return {(filename, pos): (i + 1, key)
            for i, (_, filename, pos, key) in enumerate(sorted(calls))}


def _input_expr(node: ast.Call) -> ast.expr:
    if node.args:
        return node.args[0]
    for keyword in node.keywords:
        if keyword.arg == 'input':
            return keyword.value
    if isinstance(node.func, ast.Attribute):  # x.relu()
        return node.func.value
    raise ValueError(f'line {node.lineno}: cannot tell the input of this activation call')


class _Rewriter(ast.NodeTransformer):

    def __init__(self, replacements, self_name, private_prefix):
        self.replacements = replacements
        self.self_name = self_name
        self.private_prefix = private_prefix
        self.loop_inits: Dict[int, List[ast.stmt]] = {}
        self.stack: List[ast.AST] = []

    def generic_visit(self, node):
        self.stack.append(node)
        try:
            return super().generic_visit(node)
        finally:
            self.stack.pop()

    def visit_Attribute(self, node):
        node = self.generic_visit(node)
        # Compiled outside its class, the method would lose Python's private-name mangling.
        if node.attr.startswith('__') and not node.attr.endswith('__'):
            node.attr = self.private_prefix + node.attr
        return node

    def visit_Call(self, node):
        replacement = self.replacements.get(_position(node))
        node = self.generic_visit(node)
        if replacement is None:
            return node
        kind, name, where = replacement
        arg = _input_expr(node)
        if kind == 'drop':
            return arg
        if kind == 'loop':
            function = next(n for n in reversed(self.stack) if isinstance(n, _FUNCTIONS))
            if isinstance(function, ast.Lambda):
                raise ValueError(f'{where}: an activation call in a loop inside a lambda')
            var = f'_pwlu_loop_{name}'
            init = ast.parse(f'{var} = _pwlu_LoopSites({self.self_name}.{name}, {where!r})')
            self.loop_inits.setdefault(id(function), []).extend(init.body)
            return ast.Call(func=ast.Name(var, ast.Load()), args=[arg], keywords=[])
        func = ast.Attribute(ast.Name(self.self_name, ast.Load()), name, ast.Load())
        return ast.Call(func=func, args=[arg], keywords=[])


class _InsertLoopInits(ast.NodeTransformer):

    def __init__(self, inits):
        self.inits = inits

    def visit_FunctionDef(self, node):
        inits = self.inits.get(id(node), [])
        node = self.generic_visit(node)
        if inits:
            first = node.body[0]
            docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                         and isinstance(first.value.value, str))
            node.body[int(docstring):int(docstring)] = inits
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


_METHODS: Dict[tuple, FunctionType] = {}


def rewrite_method(method: MethodRef, replacements: Dict[Position, Tuple[str, str, str]]
                   ) -> FunctionType:
    """``method`` compiled again with some activation calls replaced.

    Args:
        method (MethodRef): The method.
        replacements (dict): Call position -> ``(kind, name, where)``: ``'module'`` calls
            ``self.<name>(x)``, ``'loop'`` the next layer of the ``ModuleList`` ``self.<name>``
            on every iteration, ``'drop'`` leaves ``x`` as it is; ``where`` names the site in
            errors.

    Returns:
        FunctionType: The new function (cached: the same replacements give the same function).
    """
    key = (method.cls, method.name, tuple(sorted(replacements.items())))
    if key in _METHODS:
        return _METHODS[key]
    node = copy.deepcopy(method.node())
    self_name = node.args.args[0].arg
    rewriter = _Rewriter(replacements, self_name, '_' + method.cls.__name__.lstrip('_'))
    original = {_position(n) for n in ast.walk(node) if isinstance(n, ast.Call)}
    missing = set(replacements) - original
    if missing:
        raise LookupError(f'{method.filename}: calls at {sorted(missing)} are not in '
                          f'{method.cls.__name__}.{method.name}')
    # _InsertLoopInits finds the functions by the ids _Rewriter recorded: NodeTransformer keeps
    # the function nodes it visits, so the ids still hold.
    node = rewriter.visit(node)
    node = _InsertLoopInits(rewriter.loop_inits).visit(node)
    # Defined inside a factory whose parameter ``__class__`` makes zero-argument super() work.
    factory = ast.FunctionDef(
        name='_pwlu_factory',
        args=ast.arguments(posonlyargs=[], args=[ast.arg('__class__'),
                                                 ast.arg('_pwlu_LoopSites')],
                           kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[node, ast.Return(ast.Name(node.name, ast.Load()))], decorator_list=[])
    for extra in (factory, factory.body[1], factory.body[1].value):
        ast.copy_location(extra, node)
    module = ast.fix_missing_locations(ast.Module(body=[factory], type_ignores=[]))
    namespace: dict = {}
    exec(compile(module, method.filename, 'exec'), method.function.__globals__, namespace)
    function = namespace['_pwlu_factory'](method.cls, LoopSites)
    function.__qualname__ = method.function.__qualname__
    _METHODS[key] = function
    return function


_CLASSES: Dict[tuple, type] = {}


def converted_class(base: type, methods: Dict[str, FunctionType]) -> type:
    """A subclass of ``base`` with ``methods``, named as ``base`` (cached, picklable)."""
    key = (base, tuple(sorted((name, id(f)) for name, f in methods.items())))
    if key not in _CLASSES:
        qualname = f'{base.__name__}_sites{len(_CLASSES)}'
        namespace = dict(methods, __module__=__name__, __qualname__=qualname)
        cls = type(base.__name__, (base, ), namespace)
        setattr(sys.modules[__name__], qualname, cls)
        _CLASSES[key] = cls
    return _CLASSES[key]
