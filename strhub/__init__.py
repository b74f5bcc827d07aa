"""strhub: scene text recognition toolkit."""
