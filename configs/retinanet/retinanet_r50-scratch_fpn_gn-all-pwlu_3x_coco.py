_base_ = '../_base_/retinanet_r50-scratch_fpn_gn-all_3x_coco.py'
# PWLU's defaults are the paper's setting: channel-wise, 16 intervals, 3-sigma realignment.
model = dict(act_cfg=dict(type='PWLU'))
