"""CRNN (Shi et al., TPAMI 2017): a VGG-style CNN, two bidirectional LSTMs and a CTC head."""

from .model import CRNN, init_weights

__all__ = ['CRNN', 'init_weights']
