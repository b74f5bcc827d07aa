"""ViTSTR (Atienza, ICDAR 2021): a plain ViT whose first output tokens are read out as characters."""

from .model import ViTSTR

__all__ = ['ViTSTR']
