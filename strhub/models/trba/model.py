"""TRBA and TRBC: the four-stage STR framework of Baek et al. (ICCV 2019), "What is wrong with scene text recognition
model comparisons?".

Stages: a thin-plate-spline (TPS) spatial transformer rectifies the image (RARE, Shi et al. 2016), a ResNet extracts
a feature sequence along the width (FAN, Cheng et al. 2017), two bidirectional LSTMs add context, and a prediction
head reads the characters: an attention decoder (TRBA) or a linear CTC head (TRBC).

Attribute names (``Transformation``, ``FeatureExtraction.ConvNet``, ``SequenceModeling``, ``Prediction`` ...) follow
the published strhub release files, so those load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.decoding import EarlyStopping, all_ended, cut_after_latest_first_eos
from strhub.models.modules import BasicBlock, BidirectionalLSTM, downsample_projection, init_weights

LOCALIZATION_CHANNELS = (64, 128, 256, 512)
RESNET_BLOCKS = (1, 2, 5, 3)


# -- Transformation: TPS spatial transformer ---------------------------------------------------------------------------


def fiducial_points(num_fiducial: int, top: float | Tensor, bottom: float | Tensor) -> Tensor:
    """(num_fiducial, 2) (x, y) points: half evenly spaced along the top edge from x = -1 to 1 at height ``top``,
    then the other half along the bottom at height ``bottom`` (scalars or per-point tensors)."""
    half = num_fiducial // 2
    x = torch.linspace(-1.0, 1.0, half, dtype=torch.float64)
    ys = [torch.as_tensor(y, dtype=torch.float64).expand(half) for y in (top, bottom)]
    return torch.cat([torch.stack([x, y], dim=1) for y in ys])


class LocalizationNetwork(nn.Module):
    """Predicts the fiducial points C' (in the input image's [-1, 1] coordinates) that map onto the fixed points C of
    the rectified image.

    Args:
        num_fiducial: number of fiducial points F (even, at least 4).
        in_channels: image channels.
    """

    def __init__(self, num_fiducial: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_fiducial = num_fiducial
        layers: list[nn.Module] = []
        channels_in = in_channels
        for i, channels_out in enumerate(LOCALIZATION_CHANNELS):
            last = i == len(LOCALIZATION_CHANNELS) - 1
            layers += [
                nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False),
                nn.BatchNorm2d(channels_out),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1) if last else nn.MaxPool2d(2, 2),
            ]
            channels_in = channels_out
        self.conv = nn.Sequential(*layers)
        self.localization_fc1 = nn.Sequential(nn.Linear(channels_in, 256), nn.ReLU(inplace=True))
        self.localization_fc2 = nn.Linear(256, 2 * num_fiducial)
        self.reset_fiducial_regressor()

    def reset_fiducial_regressor(self) -> None:
        """Zero weights and a bias holding RARE's initial points (Fig. 6a: the top row rising from y = 0 to -1, the
        bottom row from 1 to 0), so training starts from one fixed warp for every image."""
        nn.init.zeros_(self.localization_fc2.weight)
        half = self.num_fiducial // 2
        initial = fiducial_points(self.num_fiducial, torch.linspace(0.0, -1.0, half), torch.linspace(1.0, 0.0, half))
        with torch.no_grad():
            self.localization_fc2.bias.copy_(initial.flatten())

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, F, 2) fiducial points (x, y)."""
        features = self.conv(images).flatten(1)
        return self.localization_fc2(self.localization_fc1(features)).view(-1, self.num_fiducial, 2)


class GridGenerator(nn.Module):
    """Turns fiducial points C' into a sampling grid: the TPS transform that maps the rectified image's fixed points C
    onto C', evaluated at every pixel of the rectified image.

    The transform is linear in C', so both constant factors are precomputed (in float64): ``inv_delta_C``, the
    (F + 3, F + 3) inverse of the TPS system matrix of C, and ``P_hat``, the (H * W, F + 3) TPS basis at the pixel
    centres. They are buffers because the published files hold them.

    Args:
        num_fiducial: number of fiducial points F.
        output_size: (height, width) of the rectified image.
    """

    # Keeps log(r) finite where a pixel centre coincides with a fiducial point.
    eps = 1e-6

    def __init__(self, num_fiducial: int, output_size: Sequence[int]) -> None:
        super().__init__()
        self.output_size = tuple(output_size)
        ctrl = fiducial_points(num_fiducial, -1.0, 1.0)  # the rectified image's top and bottom edges
        self.register_buffer('inv_delta_C', self._inverse_system_matrix(ctrl).float())
        self.register_buffer('P_hat', self._basis_at_pixels(ctrl, *self.output_size).float())

    @staticmethod
    def _inverse_system_matrix(ctrl: Tensor) -> Tensor:
        """(F, 2) points C -> (F + 3, F + 3) inverse of [[1, C, U(|Ci - Cj|)], [0, C^T], [0, 1^T]], U(r) = r^2 log r."""
        n = ctrl.shape[0]
        dist = (ctrl[:, None] - ctrl[None]).norm(dim=-1).fill_diagonal_(1.0)  # U(1) = 0 on the diagonal
        rbf = dist.square() * dist.log()
        ones, zeros = torch.ones(n, 1, dtype=ctrl.dtype), torch.zeros(3, 3, dtype=ctrl.dtype)
        top = torch.cat([ones, ctrl, rbf], dim=1)
        bottom = torch.cat([zeros, torch.cat([ctrl.T, ones.T])], dim=1)
        return torch.linalg.inv(torch.cat([top, bottom]))

    @classmethod
    def _basis_at_pixels(cls, ctrl: Tensor, height: int, width: int) -> Tensor:
        """(H * W, F + 3) rows [1, x, y, U(|p - Cj|)] for the pixel centres p in row-major order."""
        xs = (torch.arange(-width, width, 2, dtype=ctrl.dtype) + 1.0) / width
        ys = (torch.arange(-height, height, 2, dtype=ctrl.dtype) + 1.0) / height
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
        points = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
        dist = (points[:, None] - ctrl[None]).norm(dim=-1)
        rbf = dist.square() * (dist + cls.eps).log()
        return torch.cat([torch.ones(len(points), 1, dtype=ctrl.dtype), points, rbf], dim=1)

    def forward(self, ctrl_prime: Tensor) -> Tensor:
        """(N, F, 2) fiducial points C' -> (N, H, W, 2) sampling grid for ``F.grid_sample``."""
        # TPS parameters T solve delta_C @ T = [C'; 0]; the grid is P_hat @ T.
        padded = torch.cat([ctrl_prime, ctrl_prime.new_zeros(ctrl_prime.shape[0], 3, 2)], dim=1)
        grid = self.P_hat @ (self.inv_delta_C @ padded)
        return grid.view(-1, *self.output_size, 2)


class TPSSpatialTransformer(nn.Module):
    """RARE's rectification network: localisation network + TPS grid + bilinear sampling.

    Args:
        num_fiducial: number of fiducial points F (even, at least 4).
        output_size: (height, width) of the rectified image.
        in_channels: image channels.
    """

    def __init__(self, num_fiducial: int, output_size: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        if num_fiducial < 4 or num_fiducial % 2:
            raise ValueError(f'num_fiducial must be even and at least 4 (two rows of points), got {num_fiducial}')
        self.LocalizationNetwork = LocalizationNetwork(num_fiducial, in_channels)
        self.GridGenerator = GridGenerator(num_fiducial, output_size)

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H_in, W_in) -> (N, C, H, W) rectified images of ``output_size``."""
        grid = self.GridGenerator(self.LocalizationNetwork(images))
        return F.grid_sample(images, grid, padding_mode='border', align_corners=True)


# -- FeatureExtraction: ResNet of FAN ----------------------------------------------------------------------------------


def _conv_bn(
    channels_in: int,
    channels_out: int,
    kernel: int,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A convolution without bias (batch norm follows) and its batch norm."""
    return nn.Conv2d(channels_in, channels_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(channels_out)


class ResNet(nn.Module):
    """FAN's 29-layer ResNet: four stages of basic blocks (1, 2, 5, 3), each followed by a convolution. A 32-pixel-high
    image leaves one row; the width is divided by 4, plus one column.

    Args:
        in_channels: image channels.
        out_channels: channels of the last two stages; the first two have 1/4 and 1/2 of them, the stem 1/16 and 1/8.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        stem = (out_channels // 16, out_channels // 8)
        widths = (out_channels // 4, out_channels // 2, out_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv0_1, self.bn0_1 = _conv_bn(in_channels, stem[0], 3)
        self.conv0_2, self.bn0_2 = _conv_bn(stem[0], stem[1], 3)
        self.maxpool1 = nn.MaxPool2d(2, 2)
        self.layer1 = self._make_layer(stem[1], widths[0], RESNET_BLOCKS[0])
        self.conv1, self.bn1 = _conv_bn(widths[0], widths[0], 3)
        self.maxpool2 = nn.MaxPool2d(2, 2)
        self.layer2 = self._make_layer(widths[0], widths[1], RESNET_BLOCKS[1])
        self.conv2, self.bn2 = _conv_bn(widths[1], widths[1], 3)
        # From here on the width is kept (stride 1, padding 1): the columns become the time steps.
        self.maxpool3 = nn.MaxPool2d(2, (2, 1), (0, 1))
        self.layer3 = self._make_layer(widths[1], widths[2], RESNET_BLOCKS[2])
        self.conv3, self.bn3 = _conv_bn(widths[2], widths[2], 3)
        self.layer4 = self._make_layer(widths[2], widths[3], RESNET_BLOCKS[3])
        self.conv4_1, self.bn4_1 = _conv_bn(widths[3], widths[3], 2, (2, 1), (0, 1))
        self.conv4_2, self.bn4_2 = _conv_bn(widths[3], widths[3], 2, 1, 0)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        first = BasicBlock(inplanes, planes, downsample=downsample_projection(inplanes, planes))
        return nn.Sequential(first, *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, 32, W) -> (N, out_channels, 1, W / 4 + 1)."""
        x = self.relu(self.bn0_1(self.conv0_1(x)))
        x = self.relu(self.bn0_2(self.conv0_2(x)))
        x = self.relu(self.bn1(self.conv1(self.layer1(self.maxpool1(x)))))
        x = self.relu(self.bn2(self.conv2(self.layer2(self.maxpool2(x)))))
        x = self.relu(self.bn3(self.conv3(self.layer3(self.maxpool3(x)))))
        x = self.relu(self.bn4_1(self.conv4_1(self.layer4(x))))
        return self.relu(self.bn4_2(self.conv4_2(x)))


class ResNetFeatureExtractor(nn.Module):
    """Holds the :class:`ResNet` as ``ConvNet``: the published files nest it one level deeper."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ConvNet = ResNet(in_channels, out_channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.ConvNet(images)


# -- Prediction: attention decoder -------------------------------------------------------------------------------------


class AttentionCell(nn.Module):
    """One decoding step of the Bahdanau-style attention decoder: attend over the encoder sequence with the previous
    state, then update an LSTM cell with [context, embedding of the previous character]."""

    def __init__(self, input_size: int, hidden_size: int, embed_dim: int) -> None:
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)  # one bias for the sum of both projections
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.rnn = nn.LSTMCell(input_size + embed_dim, hidden_size)

    def forward(
        self, features: Tensor, projected: Tensor, state: tuple[Tensor, Tensor], char_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step.

        Args:
            features: (N, T, input_size) encoder sequence.
            projected: (N, T, hidden_size) ``i2h(features)``, computed once per sequence.
            state: LSTM (hidden, cell), each (N, hidden_size).
            char_embedding: (N, embed_dim) embedding of the previous character.

        Returns:
            The new (hidden, cell) state.
        """
        scores = self.score(torch.tanh(projected + self.h2h(state[0]).unsqueeze(1)))  # (N, T, 1)
        alpha = scores.softmax(dim=1)
        context = torch.bmm(alpha.transpose(1, 2), features).squeeze(1)
        return self.rnn(torch.cat([context, char_embedding], dim=1), state)


class AttentionDecoder(nn.Module):
    """Attention decoder: one :class:`AttentionCell` step per output position, the ``generator`` reads the hidden
    state into class logits.

    Args:
        input_size: features per encoder step.
        hidden_size: decoder LSTM state size.
        num_classes: output classes (also the embedded input classes: previous predictions and teacher tokens).
        embed_dim: character embedding size.
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, embed_dim: int = 256) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.attention_cell = AttentionCell(input_size, hidden_size, embed_dim)
        self.generator = nn.Linear(hidden_size, num_classes)
        self.char_embeddings = nn.Embedding(num_classes, embed_dim)

    def initial_state(self, features: Tensor) -> tuple[Tensor, Tensor]:
        zeros = features.new_zeros(features.shape[0], self.hidden_size)
        return zeros, zeros

    def forward_teacher_forced(self, features: Tensor, inputs: Tensor) -> Tensor:
        """(N, T, input_size) features, (N, L) previous-token ids (BOS first) -> (N, L, num_classes) logits."""
        projected = self.attention_cell.i2h(features)
        embeddings = self.char_embeddings(inputs)
        state = self.initial_state(features)
        hidden = []
        for i in range(inputs.shape[1]):
            state = self.attention_cell(features, projected, state, embeddings[:, i])
            hidden.append(state[0])
        return self.generator(torch.stack(hidden, dim=1))

    def forward_greedy(
        self, features: Tensor, num_steps: int, bos_id: int, eos_id: int, eos_check_interval: int | None
    ) -> Tensor:
        """Greedy decoding, each step fed the previous step's argmax.

        Args:
            features: (N, T, input_size).
            num_steps: positions to decode.
            eos_check_interval: None decodes all ``num_steps``; otherwise every this many steps, stop once every
                sequence has produced EOS and cut the output to one past the latest first EOS (so the length does
                not depend on the interval).

        Returns:
            (N, L, num_classes) logits, L <= num_steps.
        """
        n = features.shape[0]
        projected = self.attention_cell.i2h(features)
        state = self.initial_state(features)
        token = torch.full((n,), bos_id, dtype=torch.long, device=features.device)
        logits = features.new_empty(n, num_steps, self.generator.out_features)
        ended = torch.zeros(n, dtype=torch.bool, device=features.device)
        for i in range(num_steps):
            state = self.attention_cell(features, projected, state, self.char_embeddings(token))
            logits[:, i] = self.generator(state[0])
            token = logits[:, i].argmax(-1)
            if eos_check_interval is not None:
                ended |= token == eos_id
                if all_ended(ended, i, eos_check_interval, last=i + 1 == num_steps):
                    return cut_after_latest_first_eos(logits[:, : i + 1], eos_id)
        return logits


# -- The networks ------------------------------------------------------------------------------------------------------


class TPSResNetBiLSTM(nn.Module):
    """The shared front end of TRBA and TRBC: TPS rectification, ResNet features, two BiLSTMs.

    Args:
        img_size: (height, width) of the rectified image, at least 32 pixels high (32 is the published height; the
            rows the ResNet leaves from taller images are averaged).
        num_fiducial: TPS fiducial points.
        output_channel: ResNet output channels.
        hidden_size: BiLSTM state size per direction and output size.
        in_channels: image channels.
    """

    def __init__(
        self,
        img_size: Sequence[int] = (32, 128),
        num_fiducial: int = 20,
        output_channel: int = 512,
        hidden_size: int = 256,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if img_size[0] < 32:
            raise ValueError(
                f'TRBA/TRBC need an image height of at least 32 (the ResNet reduces 32 rows to one), got {img_size[0]}'
            )
        self.in_channels = in_channels
        self.Transformation = TPSSpatialTransformer(num_fiducial, img_size, in_channels)
        self.FeatureExtraction = ResNetFeatureExtractor(in_channels, output_channel)
        self.SequenceModeling = nn.Sequential(
            BidirectionalLSTM(output_channel, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )

    def encode(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, T, hidden_size) contextual features, T = W / 4 + 1 (33 for a width of 128)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f'expected images of shape (N, {self.in_channels}, H, W), got {tuple(images.shape)}')
        features = self.FeatureExtraction(self.Transformation(images))  # (N, C, H', T)
        # Average the remaining rows (one for 32-pixel-high images): the columns become the time steps.
        return self.SequenceModeling(features.mean(2).transpose(1, 2))

    def _init_weights(self) -> None:
        init_weights(self, skip=[self.Transformation.LocalizationNetwork.localization_fc2])


class TRBA(EarlyStopping, TPSResNetBiLSTM):
    """TPS-ResNet-BiLSTM-Attention.

    Args:
        num_classes: output classes, ``len(CharTokenizer(charset))`` = len(charset) + 3: the head predicts every id,
            BOS and padding included, as the published head does.
        max_label_length: longest label decoded (one more step is decoded for EOS).
        bos_id, eos_id: ids of BOS (the first decoder input) and EOS.
        char_embed_dim: size of the decoder's character embedding.
        **kwargs: see :class:`TPSResNetBiLSTM`.
    """

    def __init__(
        self,
        num_classes: int,
        max_label_length: int,
        bos_id: int,
        eos_id: int = 0,
        char_embed_dim: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_label_length < 1:
            raise ValueError(f'max_label_length must be >= 1, got {max_label_length}')
        self.max_label_length = max_label_length
        self.bos_id = bos_id
        self.eos_id = eos_id
        hidden_size = self.SequenceModeling[-1].linear.out_features
        self.Prediction = AttentionDecoder(hidden_size, hidden_size, num_classes, char_embed_dim)
        self._init_weights()

    def no_weight_decay(self) -> set[str]:
        return {'Prediction.char_embeddings.weight'}

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, C, H, W) images -> (N, L, num_classes) logits of greedy decoding.

        Args:
            max_length: longest label to decode (clipped to ``max_label_length``): L = max_length + 1. None decodes up
                to ``max_label_length`` and stops once every sequence has produced EOS; L is then one past the latest
                first EOS (max_label_length + 1 when some sequence never ends). Logits after a sequence's first EOS
                carry no meaning.
        """
        stop_early = max_length is None
        max_length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        if max_length < 0:
            raise ValueError(f'max_length must be >= 0, got {max_length}')
        features = self.encode(images)
        check_every = self.eos_check_every(features.device) if stop_early else None
        return self.Prediction.forward_greedy(features, max_length + 1, self.bos_id, self.eos_id, check_every)

    def forward_teacher_forced(self, images: Tensor, inputs: Tensor) -> Tensor:
        """Training: (N, C, H, W) images and (N, L) decoder inputs (BOS, then the label; the position after EOS is
        fed padding) -> (N, L, num_classes) logits."""
        return self.Prediction.forward_teacher_forced(self.encode(images), inputs)


class TRBC(TPSResNetBiLSTM):
    """TPS-ResNet-BiLSTM-CTC.

    Args:
        num_classes: CTC classes, ``len(CTCTokenizer(charset))`` = len(charset) + 1 (blank first).
        **kwargs: see :class:`TPSResNetBiLSTM`.
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.Prediction = nn.Linear(self.SequenceModeling[-1].linear.out_features, num_classes)
        self._init_weights()

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, C, H, W) images -> (N, T, num_classes) CTC logits; ``max_length`` is ignored (T is fixed by the image
        width)."""
        return self.Prediction(self.encode(images))
