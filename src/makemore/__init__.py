"""makemore: character-level language models, from counting to attention. Train on a text file, make more of it."""

__version__ = "0.1.0"
