"""Human durations for command options: ``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1d12h``.

Standard library only (imported by command modules at start-up).
"""

from __future__ import annotations

import re

from ian.errors import InputError

__all__ = ["format_duration", "parse_duration"]

UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_FIX = "use a number with a unit s, m, h, d or w, e.g. 90s, 12h, 30d, 2w or 1d12h"


def parse_duration(text: str, *, option: str = "duration") -> float:
    """Seconds in ``text`` (units s/m/h/d/w, parts may be combined: ``1d12h``).

    A bare number is refused (is ``30`` seconds or days?). Raises :class:`InputError` naming
    ``option`` with the accepted forms as the fix.
    """
    raw = text.strip().lower() if isinstance(text, str) else ""
    if not _WHOLE.match(raw):
        hint = _FIX
        if re.fullmatch(r"\d+(?:\.\d+)?", raw):
            hint = f"add a unit, e.g. {raw}d for days or {raw}s for seconds"
        raise InputError(f"invalid {option} {text!r}", field=option, fix=hint)
    seconds = sum(float(n) * UNITS[u] for n, u in _PART.findall(raw))
    if seconds <= 0:
        raise InputError(f"{option} must be longer than zero, not {text!r}", field=option)
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: ``45s``, ``12m``, ``3.5h``, ``2d``, ``3w`` (largest fitting unit)."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    for unit in ("w", "d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size:
            value = seconds / size
            return (
                f"{value:.0f}{unit}" if abs(value - round(value)) < 0.05 else f"{value:.1f}{unit}"
            )
    return f"{seconds:.0f}s"
