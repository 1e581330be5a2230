"""Find the program in a model's answer: the last fenced block in the problem's language.

Fences are ``` or ~~~ (three or more), with an optional info string (`python`, `py`,
`python3`, `cpp`, ...). The last block tagged with the language wins; failing that the last
untagged block; a final fence left open (a truncated answer) counts up to the end of the text.
A block tagged with another language is never run as this one.
"""

from __future__ import annotations

import re

LANGUAGE_TAGS: dict[str, tuple[str, ...]] = {
    "python": ("python", "python3", "py", "py3", "python2", "pycon"),
    "cpp": ("cpp", "c++", "cc", "cxx", "c"),
}

_FENCE = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$", re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """[(language tag lower-cased, code)] in order of appearance."""
    blocks = []
    pos = 0
    while True:
        opening = _FENCE.search(text, pos)
        if opening is None:
            return blocks
        fence = opening.group("fence")
        info = opening.group("info").strip().split()
        tag = info[0].lower().lstrip("{.").rstrip("}") if info else ""
        body_start = opening.end() + 1
        closing = re.compile(rf"^[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        end = closing.search(text, body_start)
        if end is None:
            blocks.append((tag, text[body_start:]))
            return blocks
        blocks.append((tag, text[body_start:end.start()]))
        pos = end.end()


def extract_program(answer: str | None, language: str = "python") -> str | None:
    """The program to run, or None when the answer holds no code block for ``language``."""
    if not answer:
        return None
    tags = LANGUAGE_TAGS.get(language, (language,))
    blocks = fenced_blocks(answer)
    tagged = [code for tag, code in blocks if tag in tags]
    untagged = [code for tag, code in blocks if not tag]
    chosen = tagged[-1] if tagged else (untagged[-1] if untagged else None)
    if chosen is None or not chosen.strip():
        return None
    return chosen.rstrip() + "\n"
