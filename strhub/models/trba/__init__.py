"""TRBA and TRBC (Baek et al., ICCV 2019): TPS rectification, ResNet, BiLSTM, and an attention or CTC head."""

from .model import TRBA, TRBC, AttentionDecoder, GridGenerator, ResNet, TPSResNetBiLSTM, TPSSpatialTransformer

__all__ = ['TRBA', 'TRBC', 'AttentionDecoder', 'GridGenerator', 'ResNet', 'TPSResNetBiLSTM', 'TPSSpatialTransformer']
