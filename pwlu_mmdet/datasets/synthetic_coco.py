"""A small, deterministic, COCO-format instance-segmentation data set.

Used by the CPU quick start and by the tests, so that the detectors can be trained and evaluated
with MMDetection's ``CocoDataset`` and ``CocoMetric`` without the real COCO. Each image has a
smooth, noisy background and 1..4 non-overlapping filled shapes; the class of a shape is its
form (circle, square, triangle, cross), each class drawn in its own (jittered) colour, so a small
detector learns it in a few hundred iterations. Masks are stored as polygons, which are also the
exact outlines that were drawn. Needs only numpy, OpenCV and pycocotools (no mmdet).
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

SYNTHETIC_CLASSES = ('circle', 'square', 'triangle', 'cross')
# RGB base colour of each class; every object jitters it a little.
_CLASS_COLORS = ((220, 60, 60), (60, 180, 75), (60, 90, 220), (230, 200, 40))
_SPLITS = ('train', 'val')
_META_FILE = 'synthetic_meta.json'


def _shape_polygon(label: int, cx: float, cy: float, radius: float,
                   angle: float) -> np.ndarray:
    """Outline of a shape of class ``label`` inside the circle (cx, cy, radius); (K, 2) xy."""
    if label == 0:  # circle
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif label == 1:  # square
        t = angle + math.pi / 4 + np.arange(4) * math.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif label == 2:  # triangle
        t = angle + np.arange(3) * 2 * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif label == 3:  # cross (plus sign), arms of half-width w
        w = 0.35
        pts = np.array([(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w),
                        (-1, -w), (-1, w), (-w, w), (-w, 1)], dtype=np.float64)
        c, s = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    else:
        raise ValueError(f'unknown label {label}')
    return pts * radius + np.array([cx, cy])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation linear gradient plus Gaussian noise, RGB uint8 (size, size, 3)."""
    base = rng.uniform(70, 150)
    tint = rng.uniform(-15, 15, size=3)
    gx, gy = rng.uniform(-40, 40, size=2)
    ramp = np.linspace(-0.5, 0.5, size)
    img = base + tint[None, None, :] + gx * ramp[None, :, None] + gy * ramp[:, None, None]
    img = img + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(img, 0, 255)


def _place_objects(rng: np.random.Generator, img_size: int, num: int, min_size: int,
                   max_size: int) -> List[Tuple[float, float, float]]:
    """Up to ``num`` circles (cx, cy, r) fully inside the image that do not touch each other."""
    placed = []
    for _ in range(num):
        for _try in range(50):
            r = rng.uniform(min_size, max_size) / 2
            cx, cy = rng.uniform(r + 1, img_size - r - 1, size=2)
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                placed.append((cx, cy, r))
                break
    return placed


def render_image(rng: np.random.Generator, img_size: int, min_objects: int, max_objects: int,
                 min_size: int, max_size: int) -> Tuple[np.ndarray, List[dict]]:
    """One RGB image and its objects: dicts with ``label`` (0-based) and ``polygon`` (K, 2)."""
    img = _background(rng, img_size)
    objects = []
    num = int(rng.integers(min_objects, max_objects + 1))
    for cx, cy, r in _place_objects(rng, img_size, num, min_size, max_size):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        poly = _shape_polygon(label, cx, cy, r, rng.uniform(0, 2 * math.pi))
        color = np.clip(np.array(_CLASS_COLORS[label]) + rng.uniform(-25, 25, size=3), 0, 255)
        mask = np.zeros((img_size, img_size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_AA,
                     shift=4)
        img[mask > 0] = color
        objects.append(dict(label=label, polygon=poly))
    img = np.clip(img + rng.normal(0, 4, size=img.shape), 0, 255).astype(np.uint8)
    return img, objects


def _annotation(obj: dict, ann_id: int, img_id: int, img_size: int) -> dict:
    poly = np.clip(obj['polygon'], 0, img_size)
    flat = [round(float(v), 2) for v in poly.reshape(-1)]
    rle = mask_utils.frPyObjects([flat], img_size, img_size)
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return dict(
        id=ann_id,
        image_id=img_id,
        category_id=obj['label'] + 1,
        segmentation=[flat],
        area=float(mask_utils.area(mask_utils.merge(rle))),
        bbox=[round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
              round(float(y1 - y0), 2)],
        iscrowd=0)


def _generate_split(out_dir: str, split: str, num_images: int, seed: int, img_size: int,
                    min_objects: int, max_objects: int, min_size: int, max_size: int) -> str:
    rng = np.random.default_rng([seed, _SPLITS.index(split)])
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, objects = render_image(rng, img_size, min_objects, max_objects, min_size, max_size)
        file_name = f'{i:06d}.png'
        cv2.imwrite(osp.join(img_dir, file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        img_id = i + 1
        images.append(dict(id=img_id, file_name=file_name, width=img_size, height=img_size))
        for obj in objects:
            annotations.append(_annotation(obj, len(annotations) + 1, img_id, img_size))
    coco = dict(
        info=dict(description=f'pwlu-mmdet synthetic shapes, {split}, seed {seed}'),
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape')
                    for i, n in enumerate(SYNTHETIC_CLASSES)])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def generate_synthetic_coco(out_dir: str,
                            num_train: int = 400,
                            num_val: int = 100,
                            img_size: int = 128,
                            seed: int = 0,
                            min_objects: int = 1,
                            max_objects: int = 4,
                            min_size: int = 20,
                            max_size: int = 56,
                            splits: Sequence[str] = _SPLITS,
                            force: bool = False) -> Dict[str, str]:
    """Write the data set under ``out_dir`` and return ``{split: annotation file}``.

    Layout: ``out_dir/{train,val}/NNNNNN.png`` and ``out_dir/annotations/instances_{split}.json``
    (COCO format: polygon masks, category ids 1..4). The output is a pure function of the
    arguments. When ``out_dir`` already holds a data set made with the same arguments it is
    reused unless ``force``.
    """
    if not 0 < min_objects <= max_objects:
        raise ValueError('need 0 < min_objects <= max_objects')
    if not 4 <= min_size <= max_size < img_size - 2:
        raise ValueError('need 4 <= min_size <= max_size < img_size - 2')
    unknown = set(splits) - set(_SPLITS)
    if unknown:
        raise ValueError(f'unknown splits {sorted(unknown)}; choose from {_SPLITS}')
    params = dict(num_train=num_train, num_val=num_val, img_size=img_size, seed=seed,
                  min_objects=min_objects, max_objects=max_objects, min_size=min_size,
                  max_size=max_size, classes=list(SYNTHETIC_CLASSES))
    counts = dict(train=num_train, val=num_val)
    ann_files = {s: osp.join(out_dir, 'annotations', f'instances_{s}.json') for s in splits}
    meta_file = osp.join(out_dir, _META_FILE)
    if not force and osp.exists(meta_file) and all(osp.exists(f) for f in ann_files.values()):
        with open(meta_file) as f:
            if json.load(f) == params:
                return ann_files
    for split in splits:
        _generate_split(out_dir, split, counts[split], seed, img_size, min_objects, max_objects,
                        min_size, max_size)
    with open(meta_file, 'w') as f:
        json.dump(params, f)
    return ann_files

