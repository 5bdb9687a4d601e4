_base_ = '../_base_/retinanet_r50-scratch_fpn_gn-all_3x_coco.py'
model = dict(act_cfg=dict(type='Swish'))
