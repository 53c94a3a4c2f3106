"""The paper's CNN (docs/reproduction.md §4): five Conv(valid)→ReLU→BatchNorm blocks, global average pool, linear."""

from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import nn


class ASCNet(nn.Module):
    """Kosmider's base CNN as in the paper's Table 1 (Keras-style BatchNorm and Glorot init)."""

    def __init__(
        self,
        *,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32, 32, 64, 64),
        strides: Sequence[int] = (1, 2, 1, 2, 1),
        kernel_size: int = 3,
        bn_momentum_keras: float = 0.99,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        channels, strides = list(channels), list(strides)
        if len(channels) != len(strides) or not channels:
            raise ValueError(
                f"model.channels ({len(channels)}) and model.strides ({len(strides)}) must be non-empty and equally long"
            )
        if not 0.0 <= bn_momentum_keras < 1.0:
            raise ValueError(f"model.bn_momentum_keras must be in [0, 1), got {bn_momentum_keras}")
        blocks = []
        in_ch = 1
        for out_ch, stride in zip(channels, strides):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=0),
                    nn.ReLU(inplace=True),
                    # Keras momentum weights the old running value; torch's weights the new batch value
                    nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=1.0 - bn_momentum_keras, affine=True),
                )
            )
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(in_ch, n_classes)
        self.embedding_dim = in_ch
        self.n_classes = n_classes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform kernels and zero biases, as Keras initialises Conv2D and Dense."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                assert module.bias is not None  # every conv and dense layer here is built with a bias
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits [N, n_classes], GAP embedding [N, C_last]) from one forward pass."""
        emb = self.features(x).mean(dim=(2, 3))
        if emb.device.type == "cpu":
            # Σ_j w_ij·e_j as ATen's own product and sum, not nn.Linear's MKL GEMM: MKL follows its reproducibility
            # branch (heatedasc.pinning) only on Intel CPUs, so CPU training would round otherwise on AMD.
            w, b = self.classifier.weight, self.classifier.bias
            return (emb.unsqueeze(1) * w).sum(dim=2) + b, emb
        return self.classifier(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[1]

    def kernel_parameters(self) -> list[nn.Parameter]:
        """Conv and dense kernels: the tensors the Keras L2 regulariser acts on (no biases, no BN)."""
        return [cast(nn.Parameter, m.weight) for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, keras): Keras also counts BatchNorm moving mean/variance as (non-trainable) params."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and m.running_var is not None
    )
    return trainable, trainable + running


def block_output_shapes(model: ASCNet, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-block output shapes (C, H, W) for an input of shape (1, M, T) or (M, T), computed on the meta device.

    An input too small for a block is a RuntimeError, as in the real model: the meta device returns an empty
    output (a 0-sized side) where a real convolution refuses, so that case is raised here too."""
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    x = torch.empty((1,) + shape, device="meta")
    shapes = []
    for number, block in enumerate(model.blocks, start=1):
        assert isinstance(block, nn.Sequential)
        conv = block[0]
        assert isinstance(conv, nn.Conv2d)
        block_input = tuple(x.shape[1:])
        # conv on meta tensors with the real kernel's shape; no compute, no memory
        x = nn.functional.conv2d(
            x, torch.empty(conv.weight.shape, device="meta"), stride=conv.stride, padding=conv.padding
        )
        if 0 in x.shape:
            raise RuntimeError(f"block {number}: its input {block_input} gives an empty output {tuple(x.shape[1:])}")
        shapes.append(tuple(x.shape[1:]))
    return shapes
