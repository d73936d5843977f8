from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A small corpus the tests share (names_file writes it three times over).
NAMES = [
    "emma",
    "olivia",
    "ava",
    "isabella",
    "sophia",
    "mia",
    "amelia",
    "harper",
    "evelyn",
    "abigail",
    "emily",
    "ella",
    "elizabeth",
    "camila",
    "luna",
    "sofia",
    "avery",
    "mila",
    "aria",
    "scarlett",
    "penelope",
    "layla",
    "chloe",
    "victoria",
    "madison",
    "eleanor",
    "grace",
    "nora",
    "riley",
    "zoey",
]

# Tiny models gain nothing from a second thread, and OpenMP spinning stalls them on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def names_file(tmp_path: Path) -> Path:
    """A small line-mode dataset written by the test itself (no network, no shared data needed)."""
    path = tmp_path / "names.txt"
    path.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    return path
