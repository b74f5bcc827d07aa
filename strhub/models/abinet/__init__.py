"""ABINet (Fang et al., CVPR 2021): vision model, bidirectional cloze language model and iterative fusion."""

from .language import BCNLanguageModel
from .model import ABINet, Alignment, sequence_lengths
from .vision import ParallelVisualAttention, PositionAttention, ResNet45, VisionModel

__all__ = [
    'ABINet',
    'Alignment',
    'BCNLanguageModel',
    'ParallelVisualAttention',
    'PositionAttention',
    'ResNet45',
    'VisionModel',
    'sequence_lengths',
]
