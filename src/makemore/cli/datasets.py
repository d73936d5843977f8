"""`makemore datasets`: list the built-in datasets."""

from __future__ import annotations

from makemore.cli.common import Parser
from makemore.data.lines import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    builtin_text,
    parse_items,
)


def cmd_datasets(argv: list[str]) -> int:
    Parser(prog="makemore datasets", description="List the built-in datasets.").parse_args(argv)
    for name, description in BUILTIN_DATASETS.items():
        count = len(parse_items(builtin_text(name), name, 1 << 20))
        default = " (default)" if name == DEFAULT_DATASET else ""
        print(f"{name:<12} {count:>6} items  {description}{default}")
    return 0
