"""Shell-style patterns where slugs are accepted (`aidp ws run 'issue-*'`): each word is a slug or
a pattern matched against the workstreams there are. A pattern that matches nothing is an error
naming it; a word the shell already expanded into a file name gets a hint to quote the pattern."""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

from aidp.engine import Engine
from aidp.engine.errors import InvalidInput, InvalidSlug
from aidp.engine.model import validate_slug

PATTERN_CHARS = frozenset("*?[")


def is_pattern(word: str) -> bool:
    return not PATTERN_CHARS.isdisjoint(word)


async def expand(engine: Engine, words: list[str]) -> list[str]:
    """The slugs the words name, in the order given, each once. Plain slugs are checked for
    their form only (whether they exist is the engine's to say, as for any slug)."""
    for word in words:
        if not is_pattern(word):
            _check_form(word)
    if not any(is_pattern(word) for word in words):
        return list(dict.fromkeys(words))
    known = [ws.slug for ws in await engine.workstreams(changes=False)]
    slugs: list[str] = []
    for word in words:
        if not is_pattern(word):
            slugs.append(word)
        elif hits := [slug for slug in known if fnmatchcase(slug, word)]:
            slugs += hits
        else:
            raise InvalidInput(f"no workstream matches {word!r} ('aidp ws list' shows them all)")
    return list(dict.fromkeys(slugs))


def _check_form(word: str) -> None:
    """A bad slug's usual error, or, for a file that exists here, what probably happened."""
    try:
        validate_slug(word)
    except InvalidSlug:
        if os.path.lexists(word):
            raise InvalidInput(
                f"{word!r} is a file here, not a slug: the shell expanded a pattern into file names; "
                "quote the pattern so aidp sees it (aidp ws run 'issue-*')"
            ) from None
        raise
