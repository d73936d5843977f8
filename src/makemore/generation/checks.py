"""The Python API's argument checks: each bad argument is a one-line MakemoreError that names it."""

from __future__ import annotations

import math

from makemore.errors import MakemoreError

MAX_ITEMS, MAX_BEAM, MAX_ITEM_LEN = 100_000, 10_000, 1 << 16  # limits on n; best, beam, width, particles; max_len
MAX_STREAM_LENGTH = 1 << 24  # characters one continue_text call may draw
CONDITIONING = ("auto", "reject", "mask")


def check_generate_args(
    n: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None, beam: int | None,
    beam_width: int | None, length_penalty: float, min_len: int, max_len: int | None, min_distance: int | None,
    max_attempts: int | None, particles: int, greedy: bool, conditioning: str,
) -> None:  # fmt: skip
    """`Run.generate`'s arguments, checked: a one-line MakemoreError naming the first bad one."""
    positive(n, "n", allow_none=False)
    # upper limits: a typo (an extra zero, a pasted number) should fail at once, not fill memory for minutes
    for value, name, limit in ((n, "n", MAX_ITEMS), (beam, "beam", MAX_BEAM), (beam_width, "beam_width", MAX_BEAM),
                               (particles, "particles", MAX_BEAM), (max_len, "max_len", MAX_ITEM_LEN)):  # fmt: skip
        if value is not None and value > limit:
            raise MakemoreError(f"{name} must be <= {limit:,}, got {value}")
    if seed is not None and not 0 <= seed < 1 << 63:
        raise MakemoreError(f"seed must be in 0..2**63-1, got {seed}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise MakemoreError(f"temperature must be > 0 and finite, got {temperature}")
    positive(top_k, "top_k")
    if top_p is not None and not 0 < top_p <= 1:
        raise MakemoreError(f"top_p must be in (0, 1], got {top_p}")
    positive(beam, "beam")
    positive(beam_width, "beam_width")
    positive(min_distance, "min_distance")
    positive(max_attempts, "max_attempts")
    positive(particles, "particles", allow_none=False)
    if conditioning not in CONDITIONING:
        raise MakemoreError(f"conditioning must be one of {', '.join(CONDITIONING)}, got {conditioning!r}")
    if particles > 1 and (greedy or beam or top_k or top_p is not None):
        raise MakemoreError("particles (sequential Monte Carlo) works with sampling and temperature only")
    if not (length_penalty >= 0 and math.isfinite(length_penalty)):
        raise MakemoreError(f"length_penalty must be >= 0, got {length_penalty}")
    if min_len < 0:
        raise MakemoreError(f"min_len must be >= 0, got {min_len}")


def check_search_args(
    best: int | None, beam: int | None, beam_width: int | None, length_penalty: float, max_expansions: int,
    particles: int,
) -> None:  # fmt: skip
    """The arguments of the two searches for the most probable items: exact `best`, approximate `beam`."""
    positive(best, "best")
    positive(max_expansions, "max_expansions", allow_none=False)
    if best is not None and best > MAX_BEAM:
        raise MakemoreError(f"best must be <= {MAX_BEAM:,}, got {best}")
    if best is not None and beam is not None:
        raise MakemoreError("give best (exact best-first search) or beam (approximate beam search), not both")
    if best is not None and (beam_width is not None or length_penalty):
        raise MakemoreError("beam_width and length_penalty are for beam search; best ranks by probability alone")
    if best is not None and particles > 1:
        raise MakemoreError("particles (sequential Monte Carlo) works with sampling and temperature only")


def check_prefix_fits(prefix: str, max_len: int) -> None:
    """Refuse up front a prefix that no item may have: sampling could only come back empty-handed."""
    if len(prefix) > max_len:
        raise MakemoreError(
            f"prefix {prefix[:40]!r} is {len(prefix)} characters, longer than max_len {max_len} (--max-len): "
            "shorten the prefix or raise max_len"
        )


def positive(value: float | None, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not value >= 1:
        raise MakemoreError(f"{name} must be >= 1, got {value}")
