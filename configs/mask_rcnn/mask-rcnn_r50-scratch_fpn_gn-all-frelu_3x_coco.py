_base_ = '../_base_/mask-rcnn_r50-scratch_fpn_gn-all_3x_coco.py'
# F-ReLU (the Funnel activation), Table 3's third row. Its defaults fit this setting: GroupNorm
# (32 groups) in the funnel condition, as everywhere in the model (2 images per GPU, from
# scratch), and a 1 x 1 funnel at the box head's fc sites (see pwlu_mmdet/layers/frelu.py).
model = dict(act_cfg=dict(type='FReLU'))
