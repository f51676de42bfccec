"""Class names: validation and the normal form used for cache keys."""

from __future__ import annotations

import unicodedata

from .errors import InvalidSetting, OvdiffError

MAX_NAME_LENGTH = 1000


def normalise(name: str) -> str:
    """Unicode NFC and trimmed whitespace; case is kept (it can matter to the prompt)."""
    return unicodedata.normalize("NFC", name).strip()


def validate(name: str) -> str:
    """Return the normal form of `name`, or raise a one-line error saying what is wrong."""
    if not isinstance(name, str):
        raise InvalidSetting("classes", f"takes class names as text; got {type(name).__name__} {name!r:.60}")
    norm = normalise(name)
    if not norm:
        raise OvdiffError("class name is blank: give each class a word or phrase, e.g. cat or 'chocolate glazed donut'")
    if len(norm) > MAX_NAME_LENGTH:
        raise OvdiffError(
            f"class name of {len(norm)} characters is too long (at most {MAX_NAME_LENGTH}): '{norm[:40]}…'"
        )
    bad = [c for c in norm if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") and c not in "\u200d"]
    if bad:
        raise OvdiffError(
            f"class name {norm[:60]!r} contains control characters ({', '.join(repr(c) for c in bad[:3])})"
        )
    return norm


class ClassNames(list):
    """A list of class names already checked and normalised by `class_list`: a call that is given one
    (the CLI's parsed list, passed on to the Pipeline) does not check it again."""


def parse_class_list(spec: str | None, file_text: str | None = None, extra: list[str] | None = None) -> list[str]:
    """Class names from a comma list, a file (one per line) and positional names, in order.

    Duplicates (after normalisation) are an error: a repeated class would silently change
    the label indices that the outputs' palette and legend depend on.
    """
    names: list[str] = list(extra or [])
    if spec is not None:
        if not spec.strip():
            raise InvalidSetting("classes", "is empty: give a comma-separated list, e.g. cat,dog,sky")
        names.extend(spec.split(","))
    if file_text is not None:
        names.extend(line for line in file_text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return class_list(names, allow_empty=True)


def class_list(names: object, allow_empty: bool = False) -> list[str]:
    """The normal forms of a list of class names (the CLI's and the API's one rule), or a one-line error:
    a list of text, none blank or too long, none repeated after normalisation ("kite" and "kite ")."""
    if isinstance(names, ClassNames) and (names or allow_empty):
        return names
    if isinstance(names, (str, bytes, dict, set, frozenset)) or not hasattr(names, "__iter__"):
        why = (
            " (its order would be arbitrary: label k is the k-th name)"
            if isinstance(names, (dict, set, frozenset))
            else ""
        )
        raise InvalidSetting("classes", f"takes a list of class names, not {type(names).__name__} {names!r:.60}{why}")
    out = distinct([validate(raw) for raw in names])
    if not out and not allow_empty:
        raise InvalidSetting("classes", "is empty: give at least one class name")
    return ClassNames(out)


def distinct(names: list[str]) -> list[str]:
    """`names` (normalised), or an error for a class given twice, or twice in different case (kite,
    Kite): two labels would then share one meaning and split its pixels between them."""
    seen: set[str] = set()
    folded: dict[str, str] = {}
    for norm in names:
        if norm in seen:
            raise OvdiffError(f"class {norm!r} is given twice: each class may appear once")
        if norm.casefold() in folded:
            raise OvdiffError(
                f"classes {folded[norm.casefold()]!r} and {norm!r} differ only in case: give one of them "
                "(case is kept, as it can matter to the prompt)"
            )
        seen.add(norm)
        folded[norm.casefold()] = norm
    return names
