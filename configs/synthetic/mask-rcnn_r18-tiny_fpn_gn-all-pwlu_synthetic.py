_base_ = '../_base_/mask-rcnn_r18-tiny_fpn_gn-all_synthetic.py'
model = dict(act_cfg=dict(type='PWLU'))
