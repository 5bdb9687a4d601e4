"""Models for the activation benchmarks (the PWLU paper's Table 4)."""
from .resnet import ResNetClassifier, TorchResNet, build_resnet_classifier

__all__ = ['ResNetClassifier', 'TorchResNet', 'build_resnet_classifier']
