"""MGP-STR (Wang et al., ECCV 2022): a ViT with character, BPE and WordPiece heads read through A³ modules."""

from .model import HEADS, MGPSTR, A3Module, MGPSTROutput

__all__ = ['HEADS', 'MGPSTR', 'A3Module', 'MGPSTROutput']
