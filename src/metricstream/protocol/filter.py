"""The server-side filter of a connection, and the one rule of who gets what.

The hub decides with :meth:`Filter.accepts` what to send a subscriber, the
endpoint builds a :class:`Filter` from the query string or a ``subscribe``
message, and the client applies the same rule to what it receives (a server
that ignores filters, or the FakeAI dialect).

:meth:`Filter.of` is the one check of a filter, its bounds included: the
server passes ``max_entries`` / ``max_chars`` and gets one
:class:`~metricstream.exceptions.InvalidFilterError` whose ``bound`` says
which bound was passed, or ``None`` for names that are wrong. The server
treats the two differently, on purpose:

- wrong names (a type this server does not know) are version skew as often
  as a typo: a newer page or client asking an older server for a type it
  has not heard of. The answer is an ``invalid_filter`` error and no filter
  change (a query filter installs none, so the connection gets everything);
  the connection stays, and the client, which applies the same filter to
  what it receives, still shows what it asked for.
- a filter past a bound is no honest client's skew: the bounds are far
  above the number of stream types and of served models. In a ``subscribe``
  it is refused with ``invalid_filter`` (the filter stays as it was); in
  the query string it also closes the connection with 1008, which a client
  treats as final: reconnecting with the same URL would only be refused
  again, and serving it unfiltered would hand it more than it asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import InvalidFilterError
from .messages import MODEL_SCOPED_TYPES, STREAM_TYPES, SubscribePayload

__all__ = ["Filter"]

_STREAM_TYPE_NAMES: Final = frozenset(t.value for t in STREAM_TYPES)
_MODEL_SCOPED_NAMES: Final = frozenset(t.value for t in MODEL_SCOPED_TYPES)


def _set(values: Iterable[str] | None) -> frozenset[str] | None:
    # An empty list means "no filter" on that dimension, as an empty query
    # parameter does.
    if values is None:
        return None
    return frozenset(values) or None


def _within_bounds(
    types: Iterable[str] | None,
    models: Iterable[str] | None,
    max_entries: int | None,
    max_chars: int | None,
) -> tuple[list[str] | None, list[str] | None]:
    """``types`` and ``models`` as lists, or ``InvalidFilterError`` past a bound."""
    total = 0
    lists: list[list[str] | None] = []
    for name, values in (("types", types), ("models", models)):
        if values is None:
            lists.append(None)
            continue
        items = values if isinstance(values, list) else list(values)
        if max_entries is not None and len(items) > max_entries:
            raise InvalidFilterError(f"more than {max_entries} {name} in a filter", bound="entries")
        for value in items:
            if not isinstance(value, str):
                raise InvalidFilterError(f"{name} entries must be non-empty strings: {value!r}")
            total += len(value)
        lists.append(items)
    if max_chars is not None and total > max_chars:
        raise InvalidFilterError(
            f"filter names longer than {max_chars} characters in all", bound="chars"
        )
    return lists[0], lists[1]


@dataclass(frozen=True, slots=True)
class Filter:
    """Which stream messages a connection wants; ``None`` means "all" for that dimension.

    ``types`` restricts message types; ``models`` restricts the model-scoped
    types (:data:`~metricstream.protocol.MODEL_SCOPED_TYPES`) to the named
    models, and leaves every other type alone. ``Filter()`` accepts everything.
    """

    types: frozenset[str] | None = None
    models: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        types: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        *,
        max_entries: int | None = None,
        max_chars: int | None = None,
    ) -> Filter:
        """A filter of these names, validated: every type must be a stream type.

        Empty collections mean "no filter" for that dimension. Raises
        :class:`~metricstream.exceptions.InvalidFilterError` for a type that
        is not a stream message type (a typo would otherwise install a filter
        that matches nothing) or a name that is not a non-empty string
        (``bound`` is ``None``), and, when bounds are given, for more than
        ``max_entries`` types or models (``bound == "entries"``) or more than
        ``max_chars`` characters of names in all (``bound == "chars"``). The
        bounds are checked first, on the lists as given, before any set is
        built: refusing a filter costs no more than reading it. The module
        docstring says why the server answers the two kinds differently.
        """
        if max_entries is not None or max_chars is not None:
            types, models = _within_bounds(types, models, max_entries, max_chars)
        tset = _set(types)
        mset = _set(models)
        for name, values in (("types", tset), ("models", mset)):
            for value in values or ():
                if not isinstance(value, str) or not value:
                    raise InvalidFilterError(f"{name} entries must be non-empty strings: {value!r}")
        unknown = sorted(tset - _STREAM_TYPE_NAMES) if tset else []
        if unknown:
            raise InvalidFilterError(f"not stream message types: {unknown}")
        return cls(tset, mset)

    @classmethod
    def from_payload(
        cls,
        payload: SubscribePayload,
        *,
        max_entries: int | None = None,
        max_chars: int | None = None,
    ) -> Filter:
        """The filter a ``subscribe`` message asks for (validated as :meth:`of`)."""
        return cls.of(payload.types, payload.models, max_entries=max_entries, max_chars=max_chars)

    @classmethod
    def from_query(
        cls,
        query: Mapping[str, Sequence[str]],
        *,
        max_entries: int | None = None,
        max_chars: int | None = None,
    ) -> Filter:
        """The filter of a parsed query string (``types=a,b&types=c`` → {a, b, c}).

        Validated as :meth:`of`, bounds included; blank entries are ignored.
        """

        def split(name: str) -> list[str] | None:
            values = query.get(name)
            if values is None:
                return None
            return [v.strip() for value in values for v in value.split(",") if v.strip()]

        return cls.of(split("types"), split("models"), max_entries=max_entries, max_chars=max_chars)

    @property
    def is_everything(self) -> bool:
        """Whether this filter accepts every message (an unfiltered stream has no gaps)."""
        return self.types is None and self.models is None

    def accepts(self, type: str, model: str | None) -> bool:
        """Whether a stream message of ``type`` about ``model`` passes.

        ``model`` is the payload's ``model`` field (``None`` when it has none):
        a model-scoped message without a model is not about any one model and
        passes the ``models`` filter.
        """
        types = self.types
        if types is not None and type not in types:
            return False
        models = self.models
        if models is not None and model is not None and type in _MODEL_SCOPED_NAMES:
            return model in models
        return True

    def accepts_message(self, type: str, data: Any) -> bool:
        """:meth:`accepts` for a decoded payload (its ``model``, if any, is read)."""
        return self.accepts(type, getattr(data, "model", None))

    def to_payload(self) -> SubscribePayload:
        """The ``subscribe`` / ``subscribed`` payload of this filter (names sorted)."""
        return SubscribePayload(
            types=None if self.types is None else sorted(self.types),
            models=None if self.models is None else sorted(self.models),
        )

    def query_params(self) -> dict[str, str | None]:
        """The ``types`` / ``models`` query parameters of this filter (``None``: absent)."""
        return {
            "types": None if self.types is None else ",".join(sorted(self.types)),
            "models": None if self.models is None else ",".join(sorted(self.models)),
        }
