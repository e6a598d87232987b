"""Server-side aggregation: one strategy per module behind :class:`Strategy`."""

from fedma.aggregate.base import AggregateResult, SiloUpdate, Strategy, get_strategy

__all__ = ["AggregateResult", "SiloUpdate", "Strategy", "get_strategy"]
