"""TrOCR (Li et al., 2021): image Transformer encoder, Transformer text decoder, greedy and beam-search generation."""

from .generation import Generation, beam_search, generate, greedy_search
from .model import TrOCR

__all__ = ['Generation', 'TrOCR', 'beam_search', 'generate', 'greedy_search']
