"""Render metric dicts (from any scorer in ``rsfuse.eval``) as a markdown table with the protocol on every number."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["json_ready", "metrics_to_markdown"]

# Keys that describe a result rather than being a metric.
DESCRIPTIVE_KEYS = frozenset({"protocol", "notes", "unavailable", "tokenizer"})


def _rows(metrics: Mapping[str, Any], prefix: str, protocol: str, unavailable: Mapping[str, str]):
    for key, value in metrics.items():
        if key in DESCRIPTIVE_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _rows(value, f"{name} / ", protocol, unavailable)
        elif value is None:
            reason = unavailable.get(key)
            yield name, f"n/a ({reason})" if reason else "n/a", protocol
        elif isinstance(value, int):
            yield name, str(value), protocol
        elif isinstance(value, float):
            yield name, f"{value:.4f}", protocol
        else:
            yield name, str(value), protocol


def metrics_to_markdown(metrics: Mapping[str, Any], *, title: str | None = None) -> str:
    """A ``| metric | value | protocol |`` table; nested dicts (per-type results) become ``outer / inner`` rows.

    ``metrics`` must carry ``protocol``. Missing values (``None``) are shown as ``n/a`` with the reason from
    ``unavailable`` when there is one. Fractions are printed as is (0-1 scale, CIDEr on its own scale).
    """
    if "protocol" not in metrics:
        raise KeyError("metrics_to_markdown: the metrics dict has no 'protocol' entry; every number must name one")
    protocol = str(metrics["protocol"])
    if metrics.get("tokenizer"):
        protocol = f"{protocol}; tokenizer: {metrics['tokenizer']}"
    protocol = protocol.replace("|", "/")
    unavailable = metrics.get("unavailable") or {}
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value | protocol |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {label} |" for name, value, label in _rows(metrics, "", protocol, unavailable)]
    return "\n".join(lines) + "\n"


def json_ready(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, as ``metrics.json`` stores it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    return value
