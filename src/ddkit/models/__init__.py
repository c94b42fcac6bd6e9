"""The network zoo of the dataset-distillation literature and :func:`get_model`."""

from ddkit.models.zoo import MODELS, ConvNet, RFADConvNet, get_model

__all__ = ["MODELS", "ConvNet", "RFADConvNet", "get_model"]
