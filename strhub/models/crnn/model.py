"""CRNN: convolutional recurrent network for CTC recognition (Shi, Bai & Yao, TPAMI 2017).

A VGG-style CNN squeezes the image height to one, so every column of the final feature map is one time step; two
bidirectional LSTMs add context along the width and the last one projects to the CTC classes (blank + charset).

Parameter names follow the published strhub release file (``cnn.conv0``, ``cnn.batchnorm2`` ..., ``rnn.0``,
``rnn.1``), so it loads with ``strict=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from strhub.models.modules import BidirectionalLSTM, init_weights

# Per convolution: (kernel, padding, batch norm, pooling after it). The pooling halves the height; the last two keep
# the width (stride 1, padding 1) so a 128-pixel-wide image still gives 33 time steps.
_HALVE = ((2, 2), (2, 2), (0, 0))
_HALVE_HEIGHT = ((2, 2), (2, 1), (0, 1))
_CNN_LAYOUT = (
    (3, 1, False, _HALVE),
    (3, 1, False, _HALVE),
    (3, 1, True, None),
    (3, 1, False, _HALVE_HEIGHT),
    (3, 1, True, None),
    (3, 1, False, _HALVE_HEIGHT),
    (2, 0, True, None),
)
PUBLISHED_CNN_CHANNELS = (64, 128, 256, 256, 512, 512, 512)


class CRNN(nn.Module):
    """The CRNN network.

    Args:
        num_classes: CTC classes, ``len(CTCTokenizer(charset))`` = len(charset) + 1 (blank first).
        img_size: (height, width) of the input; the CNN reduces a height of 32 to 1 (heights 32 to 47 work).
        hidden_size: LSTM state size per direction, and the width of the first LSTM's output.
        leaky_relu: LeakyReLU(0.2) instead of ReLU after each convolution.
        cnn_channels: output channels of the seven convolutions.
        in_channels: image channels.
    """

    def __init__(
        self,
        num_classes: int,
        img_size: Sequence[int] = (32, 128),
        hidden_size: int = 256,
        leaky_relu: bool = False,
        cnn_channels: Sequence[int] = PUBLISHED_CNN_CHANNELS,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(cnn_channels) != len(_CNN_LAYOUT):
            raise ValueError(f'cnn_channels needs {len(_CNN_LAYOUT)} values (one per convolution), got {cnn_channels}')
        height = img_size[0]
        # Four poolings halve the height, then a 2x2 convolution without padding removes one row.
        if height // 16 - 1 != 1:
            raise ValueError(
                f'CRNN needs an image height from 32 to 47 (its CNN reduces the height to exactly 1), got {height}'
            )
        self.in_channels = in_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels_in = in_channels
        pool_index = 0
        for i, ((kernel, padding, batch_norm, pool), channels_out) in enumerate(zip(_CNN_LAYOUT, cnn_channels)):
            layers[f'conv{i}'] = nn.Conv2d(channels_in, channels_out, kernel, 1, padding, bias=not batch_norm)
            if batch_norm:
                layers[f'batchnorm{i}'] = nn.BatchNorm2d(channels_out)
            layers[f'relu{i}'] = nn.LeakyReLU(0.2, inplace=True) if leaky_relu else nn.ReLU(inplace=True)
            if pool is not None:
                layers[f'pooling{pool_index}'] = nn.MaxPool2d(*pool)
                pool_index += 1
            channels_in = channels_out
        self.cnn = nn.Sequential(layers)
        self.rnn = nn.Sequential(
            BidirectionalLSTM(channels_in, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, num_classes),
        )
        init_weights(self)

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, C, H, W) images -> (N, T, num_classes) CTC logits, T = W / 4 + 1 (33 for a width of 128).

        ``max_length`` is accepted for the common model interface and ignored: the number of CTC frames is fixed by
        the image width.
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f'expected images of shape (N, {self.in_channels}, H, W), got {tuple(images.shape)}')
        features = self.cnn(images)
        if features.shape[2] != 1:
            raise ValueError(
                f'images of height {images.shape[2]} leave a feature map of height {features.shape[2]}; '
                'CRNN needs heights from 32 to 47'
            )
        return self.rnn(features.squeeze(2).transpose(1, 2))
