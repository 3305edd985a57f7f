"""Selecting layers and blocks by position, as ``--shift-skip`` and ``--attention-skip`` do."""

from __future__ import annotations


def position_matches(token: str, index: int, count: int) -> bool | None:
    """Whether ``token`` (``first``, ``last``, or an index, negative counting from the end as in
    Python) names position ``index`` of ``count``; None when ``token`` is not positional."""
    if token == "first":
        return index == 0
    if token == "last":
        return index == count - 1
    if token.lstrip("-").isdigit():
        position = int(token)
        return -count <= position < count and index == position % count
    return None
