"""Shared pytest configuration: CUDA cases are marked and skipped where no GPU is present."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'needs_cuda' in item.keywords:
            item.add_marker(skip)
