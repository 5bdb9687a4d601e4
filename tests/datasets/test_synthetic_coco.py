"""The synthetic COCO-format data set generator (no mmdet needed)."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest
from pycocotools.coco import COCO

from pwlu_mmdet.datasets import SYNTHETIC_CLASSES, generate_synthetic_coco

SMALL = dict(num_train=6, num_val=3, img_size=64, min_size=12, max_size=30)


def digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    return root, generate_synthetic_coco(root, **SMALL)


def test_deterministic(dataset, tmp_path):
    root, _ = dataset
    generate_synthetic_coco(str(tmp_path / 'again'), **SMALL)
    assert digest(str(tmp_path / 'again')) == digest(root)
    generate_synthetic_coco(str(tmp_path / 'seed1'), seed=1, **SMALL)
    assert digest(str(tmp_path / 'seed1')) != digest(root)


def test_coco_format(dataset):
    root, ann_files = dataset
    assert sorted(ann_files) == ['train', 'val']
    for split, count in (('train', 6), ('val', 3)):
        coco = COCO(ann_files[split])
        assert len(coco.imgs) == count
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
        assert len(coco.anns) >= count
        for img in coco.imgs.values():
            assert osp.exists(osp.join(root, split, img['file_name']))
            assert (img['width'], img['height']) == (64, 64)
        for ann in coco.anns.values():
            mask = coco.annToMask(ann)
            assert ann['iscrowd'] == 0 and isinstance(ann['segmentation'], list)
            assert ann['area'] == pytest.approx(mask.sum(), rel=0.01)
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            assert 12 * 0.5 <= max(w, h) <= 30 + 1
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1
            assert y - 1 <= ys.min() and ys.max() <= y + h + 1


def test_masks_match_the_drawn_objects(dataset):
    """Pixels inside a mask have the class colour (the objects are what the masks say)."""
    import cv2
    root, ann_files = dataset
    coco = COCO(ann_files['train'])
    colours = {}
    for ann in coco.anns.values():
        img = coco.imgs[ann['image_id']]
        rgb = cv2.imread(osp.join(root, 'train', img['file_name']))[:, :, ::-1]
        mask = cv2.erode(coco.annToMask(ann), np.ones((3, 3), np.uint8)).astype(bool)
        colours.setdefault(ann['category_id'], []).append(rgb[mask].mean(axis=0))
    means = {k: np.mean(v, axis=0) for k, v in colours.items()}
    for cat_id, mean in means.items():
        others = [np.abs(mean - m).sum() for k, m in means.items() if k != cat_id]
        assert all(d > 60 for d in others)


def test_reuse_and_force(tmp_path):
    root = str(tmp_path)
    ann_files = generate_synthetic_coco(root, **SMALL)
    before = os.path.getmtime(ann_files['val'])
    generate_synthetic_coco(root, **SMALL)
    assert os.path.getmtime(ann_files['val']) == before
    with open(osp.join(root, 'synthetic_meta.json')) as f:
        assert json.load(f)['num_train'] == 6
    image = osp.join(root, 'val', '000000.png')
    os.remove(image)
    generate_synthetic_coco(root, **SMALL)
    assert not osp.exists(image)
    generate_synthetic_coco(root, force=True, **SMALL)
    assert osp.exists(image)
    other = generate_synthetic_coco(root, **{**SMALL, 'num_val': 2})
    assert len(COCO(other['val']).imgs) == 2


@pytest.mark.parametrize('kwargs', [dict(min_objects=0), dict(min_size=40, max_size=30),
                                    dict(max_size=63, img_size=64), dict(splits=['test'])])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_synthetic_coco(str(tmp_path), **{**SMALL, **kwargs})
