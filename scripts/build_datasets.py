"""Convert the US Census 1990 name lists shipped by the PyPI package `names` into makemore's built-in datasets.

Run once by a maintainer (`pip install names==0.3.0 && python scripts/build_datasets.py`); the output files are
committed under src/makemore/datasets/, so makemore itself never needs `names` nor the network.
Each output line is one lower-cased name; duplicates across the source lists are dropped, order is by first
appearance (the census lists are sorted by frequency, so common names come first).
"""

from __future__ import annotations

import gzip
import pathlib

import names

SOURCE = pathlib.Path(names.__file__).parent
TARGET = pathlib.Path(__file__).resolve().parents[1] / "src" / "makemore" / "datasets"
DATASETS = {
    "first-names": ["dist.female.first", "dist.male.first"],
    "surnames": ["dist.all.last"],
}


def read_census_names(filenames: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for filename in filenames:
        for line in (SOURCE / filename).read_text(encoding="ascii").splitlines():
            if line.strip():
                seen.setdefault(line.split()[0].lower(), None)
    return list(seen)


# Labelled datasets (label<TAB>item lines): each list's names under its label; a name on both lists appears under both.
LABELLED = {
    "first-names-by-sex": {"female": "dist.female.first", "male": "dist.male.first"},
}


def write_gzip(path: pathlib.Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode("ascii")
    # mtime=0 keeps the gzip bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(data)


def main() -> None:
    for name, filenames in DATASETS.items():
        items = read_census_names(filenames)
        write_gzip(TARGET / f"{name}.txt.gz", items)
        print(f"{name}: {len(items)} items")
    for name, lists in LABELLED.items():
        lines = [f"{label}\t{item}" for label, filename in lists.items() for item in read_census_names([filename])]
        write_gzip(TARGET / f"{name}.tsv.gz", lines)
        print(f"{name}: {len(lines)} labelled items")


if __name__ == "__main__":
    main()
