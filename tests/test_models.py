import pytest
import torch

from ddkit.errors import ModelError
from ddkit.models import MODELS, get_model
from ddkit.models.zoo import check_input


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 28), (1, 32), (3, 32)])  # the field's image shapes
def test_every_model_maps_images_to_logits(name, channels, size):
    net = get_model(name, channels, 10, size)
    x = torch.randn(3, channels, size, size)
    feats = net.embed(x)
    assert feats.shape == (3, net.feature_dim)
    assert net(x).shape == (3, 10)
    assert net.classifier.in_features == net.feature_dim


def test_convnet_default_is_convnet3_width128_instancenorm():
    net = get_model("convnet", 1, 10, 28)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 3 and all(c.out_channels == 128 for c in convs)
    assert all(n.num_groups == n.num_channels == 128 for n in norms) and len(norms) == 3
    assert net.feature_dim == 128 * 4 * 4  # 28×28 padded to 32 by the first conv, as the DC code


def test_model_errors():
    with pytest.raises(ModelError, match="unknown model"):
        get_model("resnet99", 1, 10, 28)
    with pytest.raises(ModelError, match="vgg11"):
        get_model("vgg11", 1, 10, 8)
    with pytest.raises(ModelError, match="too deep"):
        get_model("convnet", 1, 10, 8, depth=4)
    net = get_model("convnet", 1, 10, 28)
    with pytest.raises(ModelError, match="expects"):
        check_input(net, torch.zeros(2, 3, 28, 28))
