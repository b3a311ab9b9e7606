"""Per-row random streams.

Every random draw for a row comes from a generator seeded by ``(global seed, image_id, stream)``, so a row's
result does not depend on batch size, batch order or the number of processes. Generators and draws live on the
CPU (``device="cpu"``, said explicitly), so a row draws the same numbers on every machine; values drawn here are
Python numbers, and a tensor drawn from a row generator is moved to the data's device where it meets the data.
"""

from __future__ import annotations

import hashlib

import torch


def row_seed(seed: int, image_id: str, stream: str) -> int:
    """A 63-bit integer derived from the global seed, the row's id and the name of a random stream."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def row_generator(seed: int, image_id: str, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for one row and one stream (draws on the CPU are identical on every machine)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(row_seed(seed, image_id, stream))
    return generator


def noise_generators(seed: int, image_ids: list[str], stream: str, members: int) -> list[torch.Generator]:
    """One generator per row and ensemble member, row-major (the order a Marigold pipeline draws its starting noise
    in), for the streams ``"<stream>:<member>"``: a row's noise depends neither on its batch nor on the device."""
    return [row_generator(seed, image_id, f"{stream}:{member}") for image_id in image_ids for member in range(members)]


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float drawn uniformly from ``[low, high)``."""
    return low + (high - low) * torch.rand((), generator=generator, device="cpu", dtype=torch.float64).item()


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """One integer drawn uniformly from ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=generator, device="cpu", dtype=torch.int64).item())


def choice(generator: torch.Generator, options: list, weights: list[float] | None = None):
    """One element of ``options``, drawn with the given relative weights (uniform when omitted)."""
    if weights is None:
        w = torch.ones(len(options), device="cpu", dtype=torch.float64)
    else:
        w = torch.tensor(weights, device="cpu", dtype=torch.float64)
    index = int(torch.multinomial(w, 1, generator=generator).item())
    return options[index]
