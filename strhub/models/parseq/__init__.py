"""PARSeq (Bautista & Atienza, ECCV 2022): the network and its permutation language modelling objective."""

from .model import PARSeq
from .permutation import generate_permutations, permutation_masks, plm_loss

__all__ = ['PARSeq', 'generate_permutations', 'permutation_masks', 'plm_loss']
