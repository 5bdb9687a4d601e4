"""The repository's Markdown (README, docs/, benchmarks/): tables that render and relative links
that resolve, as a reader on the hosting site sees them."""
import glob
import os.path as osp
import re

import pytest
from helpers import ROOT

SKIP_DIRS = ('.venv', 'build', 'data', 'work_dirs', 'gpu_check_out', '.baseline')
MARKDOWN = sorted(
    osp.relpath(path, ROOT) for path in glob.glob(osp.join(ROOT, '**', '*.md'), recursive=True)
    if not osp.relpath(path, ROOT).startswith(SKIP_DIRS))
DELIMITER_ROW = re.compile(r'^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$')
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def prose(path):
    """The file's text without fenced code blocks."""
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        return re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)


def cell_count(row):
    row = re.sub(r'`[^`]*`', 'code', row.strip())  # a | inside code is not a cell border
    row = row.replace('\\|', '')
    return len(row.strip('|').split('|'))


def test_there_is_markdown_to_check():
    assert {'README.md', osp.join('docs', 'op.md'), osp.join('benchmarks', 'README.md')} <= set(
        MARKDOWN)


@pytest.mark.parametrize('path', MARKDOWN)
def test_tables_have_as_many_cells_as_their_header(path):
    """A table whose delimiter row or body rows do not match the header's cell count renders
    as plain text (GitHub Flavored Markdown) or loses cells."""
    lines = prose(path).split('\n')
    errors = []
    for i, line in enumerate(lines[1:], start=1):
        if not DELIMITER_ROW.match(line) or '|' not in lines[i - 1]:
            continue
        width = cell_count(lines[i - 1])
        row = i
        while row < len(lines) and lines[row].strip().startswith('|'):
            if cell_count(lines[row]) != width:
                errors.append(f'{cell_count(lines[row])} cells, header {width}: '
                              f'{lines[row].strip()[:60]}')
            row += 1
    assert not errors, f'{path}: ' + '; '.join(errors)


@pytest.mark.parametrize('path', MARKDOWN)
def test_relative_links_resolve(path):
    missing = []
    for target in LINK.findall(prose(path)):
        if re.match(r'^(https?:|mailto:|#)', target):
            continue
        if not osp.exists(osp.join(ROOT, osp.dirname(path), target.split('#')[0])):
            missing.append(target)
    assert not missing, f'{path}: links to missing files: {missing}'
