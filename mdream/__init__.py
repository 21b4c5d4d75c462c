"""mdream: hierarchical long-movie generation from multimodal scripts."""

__version__ = "0.1.0"
