"""Real networks whose features the theory is compared with: ResNet18 with the CIFAR stem and its feature taps.

:func:`resnet18` builds the network (torchvision's blocks, imported when it is called); :class:`FeatureTaps`
hooks the outputs of the stem and the four stages named in :data:`RESNET_LAYERS` (the global average pool of
``layer4`` is the penultimate feature the classifier ``fc`` reads).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validate import check_float, check_integer

__all__ = ["RESNET_LAYERS", "FeatureTaps", "resnet18"]

#: Feature taps of :func:`resnet18`: the stem and the four stages (the GAP of ``layer4`` is the
#: penultimate feature the classifier ``fc`` reads).
RESNET_LAYERS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")


def resnet18(num_classes: int = 10, in_channels: int = 3, fc_bias: bool = True, width: float = 1.0) -> torch.nn.Module:
    """torchvision's ResNet18 with the CIFAR stem (3×3 conv, stride 1, no max-pool) for both datasets.

    The papers (Papyan, Han & Donoho 2020; Tirer & Bruna 2022, Fig. 5) train ResNet18 on 32×32 images without
    stating the stem; the CIFAR stem for MNIST (padded to 32×32) too is our choice (``docs/notation.md``).

    ``width`` multiplies every stage's channels (64, 128, 256, 512 at 1.0; e.g. 0.125 → 8 … 64 for CPU runs),
    built from torchvision's own ``BasicBlock``/``_make_layer``; ``in_channels`` 1 (MNIST) or 3;
    ``fc_bias`` the classifier's bias (Tirer & Bruna: none with MSE). The module ``model.maxpool``
    (an identity) outputs the stem's features.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    check_float("width", width, 0.0, strict_low=True)
    check_integer("num_classes", num_classes, 2)
    check_integer("in_channels", in_channels, 1)
    c = [max(1, round(64 * width * 2**i)) for i in range(4)]
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.inplanes = c[0]
    model.conv1 = torch.nn.Conv2d(in_channels, c[0], kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(c[0])
    model.maxpool = torch.nn.Identity()
    model.layer1 = model._make_layer(BasicBlock, c[0], 2)
    model.layer2 = model._make_layer(BasicBlock, c[1], 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, c[2], 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, c[3], 2, stride=2)
    model.fc = torch.nn.Linear(c[3], num_classes, bias=fc_bias)
    for m in model.modules():  # torchvision's initialization for the replaced modules
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return model


class FeatureTaps:
    """Forward hooks on a :func:`resnet18` that keep the outputs of the stem and the stages (``layers``, names
    from :data:`RESNET_LAYERS`) in ``out``: globally average-pooled ``(B, C)``, and with ``flatten`` also the
    flattened maps as ``"<name>_flat"`` ``(B, C·H·W)``. ``remove()`` detaches the hooks."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...], flatten: bool) -> None:
        self.out: dict[str, Tensor] = {}
        self.flatten = flatten
        modules = {"stem": model.maxpool, **{f"layer{i}": getattr(model, f"layer{i}") for i in range(1, 5)}}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def hook(_m: nn.Module, _inp: object, x: Tensor) -> None:
            self.out[name] = x.mean((2, 3))  # global average pooling; layer4's is the classifier's input
            if self.flatten:
                self.out[f"{name}_flat"] = x.flatten(1)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
