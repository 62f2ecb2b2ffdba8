"""Mashup Learning: faster, better fine-tuning by recycling past checkpoints (arXiv 2603.10156)."""

__version__ = "0.1.0"
