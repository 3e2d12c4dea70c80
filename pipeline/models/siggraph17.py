"""Zhang et al., "Real-Time User-Guided Image Colorization" (SIGGRAPH 2017) generator.

Port of richzhang/colorization colorizers/siggraph17.py (BSD-2-Clause). The module layout
mirrors upstream exactly so the published ``siggraph17-df00044c.pth`` loads with strict=True;
``width`` (64 upstream) only exists to build small test/demo instances of the same network.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHITECTURE = "siggraph17"
PUBLISHED_CONFIGS = {"siggraph17": {"classes": 529}}
PUBLISHED_WEIGHTS = "https://colorizers.s3.us-east-2.amazonaws.com/siggraph17-df00044c.pth"

L_CENT, L_NORM, AB_NORM = 50.0, 100.0, 110.0


def tiny_config() -> dict:
    return {"width": 8, "classes": 16}


def extract_state_dict(checkpoint: dict) -> dict:
    return checkpoint  # the published file is a flat state dict


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=True)


def _block(channels: list[int], dilation: int = 1) -> nn.Sequential:
    """conv/ReLU pairs then BatchNorm: upstream's index pattern (conv at 0, 2, ...; norm last)."""
    layers: list[nn.Module] = []
    for cin, cout in zip(channels, channels[1:]):
        layers += [_conv(cin, cout, dilation), nn.ReLU(True)]
    layers.append(nn.BatchNorm2d(channels[-1]))
    return nn.Sequential(*layers)


class SIGGRAPHGenerator(nn.Module):
    input_size = 256

    def __init__(self, classes: int = 529, width: int = 64):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width
        self.model1 = _block([4, w1, w1])
        self.model2 = _block([w1, w2, w2])
        self.model3 = _block([w2, w3, w3, w3])
        self.model4 = _block([w3, w4, w4, w4])
        self.model5 = _block([w4, w4, w4, w4], dilation=2)
        self.model6 = _block([w4, w4, w4, w4], dilation=2)
        self.model7 = _block([w4, w4, w4, w4])
        self.model8up = nn.Sequential(nn.ConvTranspose2d(w4, w3, kernel_size=4, stride=2, padding=1, bias=True))
        self.model8 = nn.Sequential(nn.ReLU(True), _conv(w3, w3), nn.ReLU(True), _conv(w3, w3), nn.ReLU(True),
                                    nn.BatchNorm2d(w3))
        self.model9up = nn.Sequential(nn.ConvTranspose2d(w3, w2, kernel_size=4, stride=2, padding=1, bias=True))
        self.model9 = nn.Sequential(nn.ReLU(True), _conv(w2, w2), nn.ReLU(True), nn.BatchNorm2d(w2))
        self.model10up = nn.Sequential(nn.ConvTranspose2d(w2, w2, kernel_size=4, stride=2, padding=1, bias=True))
        self.model10 = nn.Sequential(nn.ReLU(True), _conv(w2, w2), nn.LeakyReLU(negative_slope=0.2))
        # Skip connections, registered after the trunk as upstream does (keeps state-dict order).
        self.model3short8 = nn.Sequential(_conv(w3, w3))
        self.model2short9 = nn.Sequential(_conv(w2, w2))
        self.model1short10 = nn.Sequential(_conv(w1, w2))
        # Unused in forward (classification head of training) but part of the published file.
        self.model_class = nn.Sequential(nn.Conv2d(w3, classes, kernel_size=1, bias=True))
        self.model_out = nn.Sequential(nn.Conv2d(w2, 2, kernel_size=1, bias=True), nn.Tanh())

    def forward(self, input_a: torch.Tensor, input_b: torch.Tensor | None = None,
                mask_b: torch.Tensor | None = None) -> torch.Tensor:
        """L (N,1,H,W) in [0,100] (+ optional ab hints and mask) -> ab (N,2,H,W); H, W divisible by 8."""
        if input_b is None:
            input_b = torch.zeros_like(input_a).repeat(1, 2, 1, 1)
        if mask_b is None:
            mask_b = torch.zeros_like(input_a)
        x = torch.cat(((input_a - L_CENT) / L_NORM, input_b / AB_NORM, mask_b), dim=1)
        conv1 = self.model1(x)
        conv2 = self.model2(conv1[:, :, ::2, ::2])
        conv3 = self.model3(conv2[:, :, ::2, ::2])
        conv4 = self.model4(conv3[:, :, ::2, ::2])
        conv7 = self.model7(self.model6(self.model5(conv4)))
        conv8 = self.model8(self.model8up(conv7) + self.model3short8(conv3))
        conv9 = self.model9(self.model9up(conv8) + self.model2short9(conv2))
        conv10 = self.model10(self.model10up(conv9) + self.model1short10(conv1))
        return self.model_out(conv10) * AB_NORM

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        return self(lightness)
