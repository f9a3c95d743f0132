"""Price table: what a model's tokens cost."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..exceptions import ConfigError

__all__ = ["DEFAULT_PRICES", "ModelPrice"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Price of one model, in currency units per one million tokens.

    >>> ModelPrice(prompt_per_million=0.15, completion_per_million=0.60).cost(1000, 500)
    0.00045
    """

    prompt_per_million: float
    completion_per_million: float

    def __post_init__(self) -> None:
        for name in ("prompt_per_million", "completion_per_million"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"ModelPrice.{name} must be a finite number >= 0, got {value!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one request with these token counts."""
        return (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / 1_000_000


#: Illustrative list prices (per 1M tokens) for the models the demo traffic
#: uses. Real deployments pass their own table: ``MetricsCollector(prices=...)``.
DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        "openai/gpt-oss-120b": ModelPrice(0.15, 0.60),
        "openai/gpt-oss-20b": ModelPrice(0.05, 0.20),
        "meta-llama/Llama-3.1-8B-Instruct": ModelPrice(0.10, 0.10),
        "meta-llama/Llama-3.1-70B-Instruct": ModelPrice(0.60, 0.60),
        "deepseek-ai/DeepSeek-R1": ModelPrice(0.55, 2.19),
        "gpt-4o": ModelPrice(2.50, 10.00),
        "gpt-4o-mini": ModelPrice(0.15, 0.60),
        "text-embedding-3-small": ModelPrice(0.02, 0.0),
    }
)
