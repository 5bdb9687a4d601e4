"""What :func:`convert_activations` tells and leaves behind: the report of the sites, and the
stand-ins for stock modules that no call uses any more."""
import dataclasses
from typing import List, Optional, Sequence

from torch import nn

__all__ = ['SiteEntry', 'ConversionReport', 'ConvertedAway', 'converted_sites', 'REPORT_ATTR']

# The attribute of a converted model (or component) that holds its report.
REPORT_ATTR = '_pwlu_conversion'


@dataclasses.dataclass(frozen=True)
class SiteEntry:
    """One activation site of a converted model.

    Attributes:
        path (str): Module path of the site's layer (``backbone.layer1.0.act2``).
        kind (str): ``'module'`` (an activation module called once, replaced in place),
            ``'shared'`` (one of several calls of one module), ``'loop'`` (one iteration of a
            call in a loop over different layers) or ``'functional'`` (``F.relu`` and kin).
        channels (int): Channel count.
        channel_axis (int): 1 for ``(N, C, ...)``, -1 for channels-last tokens.
        stock (str): The stock activation (``ReLU``, ``F.relu`` ...).
        source (str): ``file:line`` of the call.
        action (str): ``'converted'``, or why it was kept: ``'clamp'`` (no layer consumes the
            output), ``'frozen'`` (its layer's parameters are frozen), ``'dynamic'`` (its input
            comes from a dynamic conv: instances x channels wide), ``'excluded'``.
    """
    path: str
    kind: str
    channels: int
    channel_axis: int
    stock: str
    source: str
    action: str


class ConversionReport(list):
    """The :class:`SiteEntry` of every site, in the order the trace forward reached them;
    ``str()`` gives a table."""

    def __init__(self, entries: Sequence[SiteEntry] = (), unreached: Sequence[str] = ()):
        super().__init__(entries)
        self.unreached = list(unreached)

    @property
    def converted(self) -> List[SiteEntry]:
        return [e for e in self if e.action == 'converted']

    def __str__(self) -> str:
        rows = [('path', 'kind', 'channels', 'axis', 'stock', 'action', 'source')]
        rows += [(e.path, e.kind, str(e.channels), str(e.channel_axis), e.stock, e.action,
                  e.source.rsplit('site-packages/', 1)[-1]) for e in self]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if self.unreached:
            lines.append('not reached by the trace forward (they raise if called): '
                         + ', '.join(self.unreached))
        return '\n'.join(lines)


class ConvertedAway:
    """Stands, as a plain attribute, where a stock activation module was before conversion gave
    its calls their own layers (or where one was never called). It holds no state and is not a
    submodule, as the module it replaces held none; it raises if something still calls it,
    naming the way out, rather than letting the stock activation run unnoticed."""

    def __init__(self, stock: nn.Module, path: str, reason: str) -> None:
        self.stock = repr(stock)
        self.path = path
        self.reason = reason

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f'{self.path} ({self.stock}) {self.reason}, and was now called where the trace '
            'forward of convert_activations did not reach (a training-only path?). Convert '
            f"with exclude=['{self.path}'] to keep the stock activation there.")

    def __repr__(self) -> str:
        return f'ConvertedAway({self.stock} at {self.path}: {self.reason})'


def converted_sites(model: nn.Module) -> Optional[ConversionReport]:
    """The report of the conversion of ``model`` or of one of its modules, if any."""
    for module in model.modules():
        report = module.__dict__.get(REPORT_ATTR)
        if report is not None:
            return report
    return None
