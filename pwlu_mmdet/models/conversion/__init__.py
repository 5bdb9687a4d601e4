"""Converting the activations of a built model: every hidden activation site gets its own layer.

:func:`convert_activations` traces a forward to find the sites (:mod:`.sites`, with the inputs
of :mod:`.trace_inputs`), rewrites the methods that call one activation at several places or in
a loop (:mod:`.rewrite`), and reports every site (:mod:`.report`). docs/models.md explains it.
"""
from .convert import convert_activations
from .report import ConversionReport, ConvertedAway, SiteEntry, converted_sites

__all__ = ['convert_activations', 'ConversionReport', 'SiteEntry', 'ConvertedAway',
           'converted_sites']
