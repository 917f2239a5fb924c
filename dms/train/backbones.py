"""Convolutional backbones for the head-pose student, written from the papers.

Each builder returns a module mapping ``N x 3 x S x S`` to pooled features ``N x C`` (the
classifier of the paper is left out; :mod:`dms.train.heads` puts the pose head on top).

* ResNet-18/34/50: He et al. 2016, "Deep Residual Learning" (torchvision's v1.5 layout: the
  stride of a bottleneck sits on its 3x3 convolution). Features: 512 (18/34), 2048 (50).
* MobileNetV2: Sandler et al. 2018, Table 2 (width 1.0, ReLU6, last 1x1 conv to 1280).
* MobileNetV3-small/large: Howard et al. 2019, Tables 1 and 2 (h-swish, squeeze-and-excite
  with a hard sigmoid, last 1x1 conv to 576 / 960; the 1024/1280 classifier layer is omitted).

Parameter counts (features only; compare ``count_parameters``): ResNet18 11.2 M, ResNet34
21.3 M, ResNet50 23.5 M, MobileNetV2 2.2 M, MobileNetV3-small 0.9 M, MobileNetV3-large 3.0 M.
No pretrained weights ship here: there is no registry package with them (see docs/training.md
for loading an ImageNet ``state_dict`` from elsewhere with :func:`load_matching_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from dms.errors import InputError

log = logging.getLogger(__name__)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going below 90 % (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = None,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True) if act is not nn.Hardswish else nn.Hardswish())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = _conv_bn(cin, planes, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch (Goyal et al.)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


# ----------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            _conv_bn(hidden, cout, 1),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, first stride s (paper Table 2)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 1280
        _init_mobile(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


# ----------------------------------------------------------------------------- MobileNetV3


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _make_divisible(channels / 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mean(x, dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.relu(self.fc1(s))))


class V3Block(nn.Module):
    def __init__(
        self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_conv_bn(cin, exp, 1, act=act))
        layers.append(_conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(_conv_bn(exp, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


RE, HS = nn.ReLU, nn.Hardswish
# input, kernel, expansion size, output, SE, activation, stride (paper Tables 1 and 2)
V3_LARGE = ((16, 3, 16, 16, False, RE, 1), (16, 3, 64, 24, False, RE, 2),
            (24, 3, 72, 24, False, RE, 1), (24, 5, 72, 40, True, RE, 2),
            (40, 5, 120, 40, True, RE, 1), (40, 5, 120, 40, True, RE, 1),
            (40, 3, 240, 80, False, HS, 2), (80, 3, 200, 80, False, HS, 1),
            (80, 3, 184, 80, False, HS, 1), (80, 3, 184, 80, False, HS, 1),
            (80, 3, 480, 112, True, HS, 1), (112, 3, 672, 112, True, HS, 1),
            (112, 5, 672, 160, True, HS, 2), (160, 5, 960, 160, True, HS, 1),
            (160, 5, 960, 160, True, HS, 1))  # fmt: skip
V3_SMALL = ((16, 3, 16, 16, True, RE, 2), (16, 3, 72, 24, False, RE, 2),
            (24, 3, 88, 24, False, RE, 1), (24, 5, 96, 40, True, HS, 2),
            (40, 5, 240, 40, True, HS, 1), (40, 5, 240, 40, True, HS, 1),
            (40, 5, 120, 48, True, HS, 1), (48, 5, 144, 48, True, HS, 1),
            (48, 5, 288, 96, True, HS, 2), (96, 5, 576, 96, True, HS, 1),
            (96, 5, 576, 96, True, HS, 1))  # fmt: skip


class MobileNetV3(nn.Module):
    def __init__(self, config: Sequence[tuple], last_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 16, 3, 2, act=HS)]
        for cin, k, exp, cout, se, act, stride in config:
            layers.append(V3Block(cin, k, exp, cout, se, act, stride))
        layers.append(_conv_bn(config[-1][3], last_channels, 1, act=HS))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = last_channels
        _init_mobile(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _init_mobile(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- registry


def _facemesh() -> nn.Module:
    from dms.train.facemesh_net import FaceMeshBackbone

    return FaceMeshBackbone()


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
    "resnet34": lambda: ResNet(BasicBlock, (3, 4, 6, 3)),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": lambda: MobileNetV3(V3_SMALL, 576),
    "mobilenet_v3_large": lambda: MobileNetV3(V3_LARGE, 960),
    "facemesh": _facemesh,  # FaceMesh's own weights (dms.train.facemesh_net)
}

# Features-only parameter counts in millions (the order of magnitude the tests check).
EXPECTED_PARAMS_M = {
    "resnet18": 11.2, "resnet34": 21.3, "resnet50": 23.5,
    "mobilenet_v2": 2.2, "mobilenet_v3_small": 0.93, "mobilenet_v3_large": 3.0,
    "facemesh": 0.60,
}  # fmt: skip


def build_backbone(name: str) -> nn.Module:
    """A backbone by name (see :data:`BACKBONES`); ``.out_features`` is its feature width."""
    try:
        return BACKBONES[name]()
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise InputError(f"backbone {name!r} is unknown (known: {known})") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_matching_weights(model: nn.Module, path: str | Path) -> tuple[int, int]:
    """Copy the tensors of a saved ``state_dict`` whose names and shapes match ``model``.

    ``model`` may be a backbone or a whole student (then names are also tried with a
    ``backbone.`` prefix), so this starts from ImageNet weights obtained elsewhere
    (torchvision's ResNet names match; the MobileNets' differ and nothing is copied) or from
    one of our checkpoints (``model.pt``). Returns (copied, total) tensor counts.
    """
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise InputError(f"{path}: cannot read a state_dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    matched = {}
    for k, v in state.items():
        for name in (k, f"backbone.{k}"):
            if name in own and own[name].shape == v.shape:
                matched[name] = v
                break
    model.load_state_dict(matched, strict=False)
    log.info("loaded %d of %d tensors from %s", len(matched), len(own), path)
    return len(matched), len(own)
