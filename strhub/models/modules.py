"""Building blocks shared by several architectures (one implementation each, used by every model that needs it).

Parameter names follow the published strhub release files, so models built from these blocks load those files
with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


def init_weights(module: nn.Module, skip: Iterable[nn.Module] = ()) -> None:
    """The initialisation the published strhub models were trained from, applied to every submodule of ``module``:
    truncated normal (std 0.02) linear layers and embeddings, Kaiming normal (fan-out) convolutions, unit-weight
    zero-bias norms, Xavier attention input projections, zero biases. Recurrent layers keep PyTorch's default.
    Modules in ``skip`` (and their children) are left as they are.
    """
    skipped = {id(m) for s in skip for m in s.modules()}
    for m in module.modules():
        if id(m) in skipped:
            continue
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
            if m.weight is not None:
                nn.init.ones_(m.weight)
        elif isinstance(m, nn.MultiheadAttention):
            # Re-drawn per layer: nn.Transformer* clone one layer, so they would otherwise start identical.
            if m.in_proj_weight is not None:
                nn.init.xavier_uniform_(m.in_proj_weight)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)
            continue
        else:
            continue
        if getattr(m, 'bias', None) is not None:
            nn.init.zeros_(m.bias)


class BidirectionalLSTM(nn.Module):
    """A bidirectional LSTM followed by a linear projection of both directions' states (CRNN, TRBA/TRBC).

    Args:
        input_size: features per time step in.
        hidden_size: LSTM state size per direction.
        output_size: features per time step out.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, input_size) -> (N, T, output_size)."""
        # After DataParallel/DDP replication or a device move the weights may no longer be one contiguous block,
        # which cuDNN needs; re-flattening is a no-op when they already are.
        self.rnn.flatten_parameters()
        return self.linear(self.rnn(x)[0])


class BasicBlock(nn.Module):
    """ResNet basic block: two convolutions with batch norm and a residual connection.

    Two published variants share this block: TRBA's ResNet (two 3x3 convolutions, ``first_kernel=3``) and ABINet's
    ResNet-45 (1x1 then 3x3, ``first_kernel=1``). The stride sits on the first 3x3 convolution of the block.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: spatial stride of the block.
        downsample: projection of the input for the residual when shape changes (conv 1x1 + BN), or None.
        first_kernel: kernel size of the first convolution, 3 or 1.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, first_kernel: int = 3
    ) -> None:
        super().__init__()
        if first_kernel not in (1, 3):
            raise ValueError(f'first_kernel must be 1 or 3, got {first_kernel}')
        first_stride = stride if first_kernel == 3 else 1
        self.conv1 = nn.Conv2d(inplanes, planes, first_kernel, first_stride, first_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride // first_stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(N, inplanes, H, W) -> (N, planes, H / stride, W / stride)."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


def downsample_projection(inplanes: int, planes: int, stride: int = 1) -> nn.Sequential | None:
    """The residual projection a :class:`BasicBlock` needs when stride or width change (conv 1x1 + BN), else None."""
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
