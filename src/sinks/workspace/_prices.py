"""Costs computed from a maintained price table, for responses whose producer gave none.

The table is the optional ``genai-prices`` package (installed with the
``web`` extra), imported the first time a cost is computed: without it no
cost is computed and usage says so (``cost_source`` is ``"producer"`` or
``None``). A model the table does not know (the demo's made-up ``sim-large``
and ``sim-small``, whose producer gives costs anyway) gets no computed cost:
it is not guessed from a similar name.
"""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

__all__ = ["PRICE_SOURCE", "price_table"]

PRICE_SOURCE: Final = "genai-prices"
"""The ``cost_source`` of a cost computed here."""

_PICO: Final = Decimal(10**12)


class _Table:
    """``genai_prices.calc_price`` with its failures remembered per model."""

    def __init__(self, calc: Any, usage: Any) -> None:
        self._calc = calc
        self._usage = usage
        self._unknown: set[str] = set()
        self._lock = threading.Lock()

    def picodollars(
        self, model: str, prompt: int, completion: int, cached: int, when: datetime | None
    ) -> int | None:
        """The price of these tokens of ``model`` (at ``when``), or ``None`` if it is unknown.

        ``prompt`` includes ``cached`` (the part served from the prompt cache).
        """
        if model in self._unknown:
            return None
        usage = self._usage(
            input_tokens=prompt, output_tokens=completion, cache_read_tokens=min(cached, prompt)
        )
        try:
            price = self._calc(usage, model, genai_request_timestamp=when)
        except LookupError:  # no provider or model matches the name
            with self._lock:
                self._unknown.add(model)
            return None
        return int((Decimal(price.total_price) * _PICO).to_integral_value())


_table: _Table | None = None
_loaded = False
_load_lock = threading.Lock()


def price_table() -> _Table | None:
    """The price table, or ``None`` when ``genai-prices`` is not installed."""
    global _table, _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                try:
                    from genai_prices import Usage, calc_price  # optional: the web extra
                except ImportError:
                    _table = None
                else:
                    _table = _Table(calc_price, Usage)
                _loaded = True
    return _table
