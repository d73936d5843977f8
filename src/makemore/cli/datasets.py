"""`makemore datasets`: list the built-in datasets."""

from __future__ import annotations

from makemore.cli.common import Parser
from makemore.data.labels import LABELLED_DATASETS, labelled_dataset_text, parse_labelled
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
    for name, description in LABELLED_DATASETS.items():  # label<TAB>item: train them with --labelled
        count = len(parse_labelled(labelled_dataset_text(name), name, 1 << 20)[0])
        print(f"{name:<12} {count:>6} items  {description} (labelled)")
    return 0
