"""Fixed sinusoidal position encodings (Vaswani et al., 2017), as ABINet adds them to features and queries."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    """Adds ``pe[t]`` to the feature at position ``t``, then applies dropout.

    ``pe`` is a persistent buffer of shape (max_len, 1, d_model): the published ABINet files carry it, so it is part
    of the state dict (and loading such a file restores the exact values the model was trained with).

    Args:
        d_model: feature size (even).
        max_len: longest sequence the encoding covers.
        dropout: dropout applied after the addition.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f'd_model must be even for sine/cosine position encodings, got {d_model}')
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * inv_freq)
        pe[:, 1::2] = torch.cos(position * inv_freq)
        self.register_buffer('pe', pe.unsqueeze(1))
        self.dropout = nn.Dropout(dropout)

    def encodings(self, length: int) -> Tensor:
        """The first ``length`` encodings, (length, d_model)."""
        if length > self.pe.shape[0]:
            raise ValueError(f'sequence of length {length} exceeds the {self.pe.shape[0]} encoded positions')
        return self.pe[:length, 0]

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, d_model) -> (N, T, d_model)."""
        return self.dropout(x + self.encodings(x.shape[1]))
