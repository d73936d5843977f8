"""makemore: character-level language models, from counting to attention. Train on a text file, make more of it."""

from makemore.api import Run, load

__version__ = "0.1.0"
__all__ = ["Run", "load", "__version__"]
