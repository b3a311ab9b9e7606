"""Train/validation/test assignment by a stable hash of ``image_id``: a row never changes split between rebuilds,
limits or chunk sizes."""

from __future__ import annotations

import hashlib
import re

SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SplitError(ValueError):
    """A malformed ``--splits`` value (one line, exit code 2)."""


def parse_splits(text: str) -> dict[str, float]:
    """``"train=0.9,validation=0.05,test=0.05"`` -> ordered ``{name: fraction}``; fractions must sum to 1."""
    splits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if not SPLIT_NAME.match(name):
            raise SplitError(f"--splits {text!r}: {name!r} is not a split name (lowercase letters, digits, _)")
        if name in splits:
            raise SplitError(f"--splits {text!r}: {name} appears twice")
        try:
            fraction = float(value)
        except ValueError:
            raise SplitError(f"--splits {text!r}: {name} needs a fraction, e.g. {name}=0.9") from None
        if not 0 < fraction <= 1:
            raise SplitError(f"--splits {text!r}: the fraction of {name} must be in (0, 1], got {fraction}")
        splits[name] = fraction
    if not splits:
        raise SplitError(f"--splits {text!r}: no splits given")
    if abs(sum(splits.values()) - 1.0) > 1e-6:
        raise SplitError(f"--splits {text!r}: fractions sum to {sum(splits.values()):g}, not 1")
    return splits


def split_position(image_id: str) -> float:
    """A number in [0, 1) fixed by ``image_id`` alone (blake2b of the id)."""
    digest = hashlib.blake2b(image_id.encode(), digest_size=8, person=b"relight-split").digest()
    return int.from_bytes(digest, "little") / 2**64


def assign_split(image_id: str, splits: dict[str, float]) -> str:
    """The split whose cumulative fraction interval contains ``split_position(image_id)``."""
    position, cumulative = split_position(image_id), 0.0
    for name, fraction in splits.items():
        cumulative += fraction
        if position < cumulative:
            return name
    return next(reversed(splits))
