"""ABINet's bidirectional cloze network (BCN): a language model that re-predicts every character from all the
others at once.

Each position's query (its sinusoidal position encoding) attends over the embedded character distributions of the
whole sequence except itself (a diagonal "location" mask) and except the padding past the predicted length, so
the prediction at a position depends on the left and right context only. Attribute names follow the published
strhub release files (``proj``, ``token_encoder``, ``pos_encoder``, ``model.layers.N``, ``cls``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.abinet.positional import PositionalEncoding

ACTIVATIONS = {'relu': F.relu, 'gelu': F.gelu}


class LanguageOutput(NamedTuple):
    """Per-position features (N, T, E) and class logits (N, T, num_classes)."""

    feature: Tensor
    logits: Tensor


class BCNDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer whose cross-attention reads the context; self-attention among the
    queries is optional (off in the published models, which then have no ``self_attn`` / ``norm1``)."""

    def __init__(
        self, d_model: int, nhead: int, d_inner: int, dropout: float, activation: str, self_attn: bool = False
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}')
        if self_attn:
            self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(d_model)
            self.dropout1 = nn.Dropout(dropout)
        self.has_self_attn = self_attn
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_inner)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_inner, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, query: Tensor, context: Tensor, blocked: Tensor, padding: Tensor) -> Tensor:
        """(N, T, E) queries attend over (N, T, E) context -> (N, T, E).

        Args:
            blocked: (T, T) bool, True where query i must not see context position j.
            padding: (N, T) bool, True at context positions past the sequence length.
        """
        if self.has_self_attn:
            attended = self.self_attn(query, query, query, key_padding_mask=padding, need_weights=False)[0]
            query = self.norm1(query + self.dropout1(attended))
        attended = self.multihead_attn(
            query, context, context, attn_mask=blocked, key_padding_mask=padding, need_weights=False
        )[0]
        query = self.norm2(query + self.dropout2(attended))
        out = self.linear2(self.dropout(self.activation(self.linear1(query))))
        return self.norm3(query + self.dropout3(out))


class BCNDecoder(nn.Module):
    """A stack of :class:`BCNDecoderLayer` (the published files name it ``model`` with ``layers``)."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BCNDecoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, query: Tensor, context: Tensor, blocked: Tensor, padding: Tensor) -> Tensor:
        for layer in self.layers:
            query = layer(query, context, blocked, padding)
        return query


class BCNLanguageModel(nn.Module):
    """The bidirectional cloze network.

    Args:
        num_classes: classes of the input distributions and of the output (EOS + charset).
        max_length: sequence length T (max label length + 1 for EOS).
        num_layers: decoder layers.
        detach: stop gradients into the input distributions (the language model is then trained as a pure
            language model, never through the vision model).
        use_self_attn: add self-attention among the queries in every layer.
    """

    def __init__(
        self,
        num_classes: int,
        max_length: int,
        d_model: int = 512,
        nhead: int = 8,
        d_inner: int = 2048,
        dropout: float = 0.1,
        activation: str = 'relu',
        num_layers: int = 4,
        detach: bool = True,
        use_self_attn: bool = False,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.detach = detach
        self.proj = nn.Linear(num_classes, d_model, bias=False)
        self.token_encoder = PositionalEncoding(d_model, max_len=max_length, dropout=dropout)
        self.pos_encoder = PositionalEncoding(d_model, max_len=max_length)
        self.model = BCNDecoder(
            num_layers,
            d_model=d_model,
            nhead=nhead,
            d_inner=d_inner,
            dropout=dropout,
            activation=activation,
            self_attn=use_self_attn,
        )
        self.cls = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> LanguageOutput:
        """Re-predicts every position from the others.

        Args:
            tokens: (N, T, num_classes) character distributions (softmax outputs, or one-hot labels).
            lengths: (N,) sequence lengths including the EOS; positions from ``lengths`` on are padding. Must be at
                least 2 so that every query sees at least one other position.
        """
        if self.detach:
            tokens = tokens.detach()
        n, length, _ = tokens.shape
        context = self.token_encoder(self.proj(tokens))
        positions = torch.arange(length, device=tokens.device)
        padding = positions.unsqueeze(0) >= lengths.unsqueeze(1)
        # A position never sees itself. Built as floats, then compared: onnxruntime has no boolean EyeLike kernel.
        blocked = torch.eye(length, device=tokens.device) > 0
        query = self.pos_encoder.encodings(length).expand(n, -1, -1)
        feature = self.model(query, context, blocked, padding)
        return LanguageOutput(feature, self.cls(feature))
