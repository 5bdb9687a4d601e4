"""Generate the synthetic COCO-format instance-segmentation data set used by the quick start.

Example::

    python tools/misc/gen_synthetic_coco.py data/synthetic_coco --num-train 400 --num-val 100
"""
import argparse

from pwlu_mmdet.datasets import SYNTHETIC_CLASSES, generate_synthetic_coco


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', nargs='?', default='data/synthetic_coco',
                        help='output folder (default: data/synthetic_coco)')
    parser.add_argument('--num-train', type=int, default=400, help='training images')
    parser.add_argument('--num-val', type=int, default=100, help='validation images')
    parser.add_argument('--img-size', type=int, default=128, help='square image side (px)')
    parser.add_argument('--min-objects', type=int, default=1, help='fewest objects per image')
    parser.add_argument('--max-objects', type=int, default=4, help='most objects per image')
    parser.add_argument('--min-size', type=int, default=20, help='smallest object extent (px)')
    parser.add_argument('--max-size', type=int, default=56, help='largest object extent (px)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the folder holds the same data set')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ann_files = generate_synthetic_coco(
        args.out_dir, num_train=args.num_train, num_val=args.num_val, img_size=args.img_size,
        seed=args.seed, min_objects=args.min_objects, max_objects=args.max_objects,
        min_size=args.min_size, max_size=args.max_size, force=args.force)
    print(f'synthetic COCO data set ({", ".join(SYNTHETIC_CLASSES)}) in {args.out_dir}:')
    for split, ann_file in ann_files.items():
        print(f'  {split}: {ann_file}')


if __name__ == '__main__':
    main()
