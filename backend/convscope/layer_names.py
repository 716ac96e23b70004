"""The one way a user's layer name becomes a module's full name.

A name is either exact (`features.relu1`, as `model.named_modules()` and the
`/layers` listing spell it) or the last dotted part(s) of exactly one name
(`relu1` -> `features.relu1`). Unknown names raise `NotFoundError`, names that
fit several layers `InvalidRequestError` listing some of them. The engine,
analyses, scans, studies and the CLI all resolve names here.
"""

from __future__ import annotations

from collections.abc import Iterable

from convscope.errors import InvalidRequestError, NotFoundError


def resolve_name(name: str, names: Iterable[str], *, model: str | None = None, what: str = "layer") -> str:
    """The full name among `names` that `name` means (exact, or a unique dotted suffix)."""
    known = [full for full in names if full]
    wanted = name.strip()
    if wanted in known:
        return wanted
    matches = [full for full in known if full.endswith("." + wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidRequestError(f"{what} {wanted!r} is ambiguous: {', '.join(matches[:5])}")
    owner = f"model {model!r}" if model else "the model"
    raise NotFoundError(
        f"{owner} has no {what} {wanted!r} (see `convscope layers` or GET /api/models/{{model}}/layers)"
    )
