"""Random draws as a pure function of ``(seed, position)``, shared by the engines.

A request's draw for the token at ``position`` depends on nothing else: not on the batch it ran in, not on
the instance, not on what it drew before. So a request that is preempted, migrated, or recomputed on
another instance after its own died samples exactly the tokens it would have sampled undisturbed::

    >>> position_seed(7, 3) == position_seed(7, 3) != position_seed(7, 4)
    True
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def position_seed(seed: int, position: int) -> int:
    """A 64-bit number determined by ``(seed, position)`` alone."""
    return splitmix64(splitmix64(seed & _MASK64) ^ (position & _MASK64))
