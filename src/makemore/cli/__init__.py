"""The `makemore` command: a dispatcher and one module per command group. Only this package prints."""

from makemore.cli.commands import main

__all__ = ["main"]
