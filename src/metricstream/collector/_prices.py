"""Price table: what a model's tokens cost."""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..exceptions import ConfigError

__all__ = ["DEFAULT_PRICES", "ModelPrice", "load_prices"]


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


def load_prices(
    path: str | os.PathLike[str], *, base: Mapping[str, ModelPrice] | None = None
) -> dict[str, ModelPrice]:
    """Read a price table from a JSON or TOML file (by its suffix).

    The file maps model names to ``{"prompt_per_million": P,
    "completion_per_million": C}`` (or a two-number list ``[P, C]``). Its
    entries are added to ``base`` (:data:`DEFAULT_PRICES` when ``None``) and
    replace the ones of the same name; pass ``base={}`` for the file alone.
    Raises :class:`~metricstream.exceptions.ConfigError` on an unreadable
    file or a malformed entry.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the price file {str(file)!r}: {exc}") from exc
    try:
        if file.suffix.lower() == ".toml":
            table: object = tomllib.loads(raw.decode("utf-8"))
        else:
            table = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the price file {str(file)!r} is not valid: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"the price file {str(file)!r} must map model names to prices")
    prices = dict(DEFAULT_PRICES if base is None else base)
    for model, entry in table.items():
        if isinstance(entry, dict) and set(entry) == {
            "prompt_per_million",
            "completion_per_million",
        }:
            prices[model] = ModelPrice(entry["prompt_per_million"], entry["completion_per_million"])
        elif isinstance(entry, list) and len(entry) == 2:
            prices[model] = ModelPrice(entry[0], entry[1])
        else:
            raise ConfigError(
                f"price of {model!r} must be {{prompt_per_million, completion_per_million}} "
                f"or [prompt, completion], got {entry!r}"
            )
    return prices
