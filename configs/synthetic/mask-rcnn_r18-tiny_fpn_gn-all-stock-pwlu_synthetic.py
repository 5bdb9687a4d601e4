# The quick-start model built from mmdet's stock component types, its activations switched by
# `model.act_cfg` as for any mmdet detector (docs/models.md): it trains bit for bit as the
# ActMaskRCNN of mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py.
_base_ = '../_base_/mask-rcnn_r18-tiny_fpn_gn-all_synthetic.py'
model = dict(
    type='MaskRCNN',
    act_cfg=dict(type='PWLU'),
    backbone=dict(type='ResNet'),
    neck=dict(type='FPN'),
    rpn_head=dict(type='RPNHead'),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead'), mask_head=dict(type='FCNMaskHead')))
