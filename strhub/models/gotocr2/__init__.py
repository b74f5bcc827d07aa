"""GOT-OCR2 (Wei et al., 2024): a SAM ViTDet encoder and a Qwen2 decoder reading text from a chat prompt."""

from .model import GotOcr2

__all__ = ['GotOcr2']
