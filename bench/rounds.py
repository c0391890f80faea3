"""The order of the sides within each round of a benchmark, and the figures of pairs of
rounds: a baseline measured in the same run only cancels the machine's noise when it
runs beside Sandbar's side in an order that favours neither."""

from __future__ import annotations

import statistics


def rotated(sides: tuple[str, ...], round_: int) -> tuple[str, ...]:
    """The sides in the order of this round (each side leads in turn)."""
    k = round_ % len(sides)
    return sides[k:] + sides[:k]


def abba(sides: tuple[str, ...], round_: int) -> tuple[str, ...]:
    """The sides in the order of this round: forward in even rounds, backward in odd ones
    (ABBA, ABCD DCBA), the forward order rotating from one pair of rounds to the next.
    Over each pair every side holds the same mean position, so a machine slowing down or
    speeding up through a pair weighs on every side alike (a rotation alone does not:
    over 3 rounds of 4 sides one side is never measured last)."""
    base = rotated(sides, round_ // 2)
    return base if round_ % 2 == 0 else base[::-1]


def even_rounds(rounds: int) -> int:
    """``rounds`` made even (rounded up): whole ABBA pairs."""
    return rounds + rounds % 2


def by_pair(values: list[float]) -> list[float]:
    """The mean of each ABBA pair of rounds (rounds 1-2, 3-4, ...)."""
    return [statistics.fmean(values[i : i + 2]) for i in range(0, len(values), 2)]


def pair_ratio(a: list[float], b: list[float]) -> float:
    """The median over ABBA pairs of ``a``'s mean in the pair over ``b``'s."""
    return statistics.median(x / y for x, y in zip(by_pair(a), by_pair(b), strict=True))


def pair_difference(a: list[float], b: list[float]) -> float:
    """The median over ABBA pairs of ``a``'s mean in the pair less ``b``'s."""
    return statistics.median(x - y for x, y in zip(by_pair(a), by_pair(b), strict=True))
