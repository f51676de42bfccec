"""MkDocs hook (mkdocs.yml `hooks:`): table cells read as GitHub reads them, so cache_schema.md shows the same on both.

A `|` inside a code span of a table cell is written `\\|` in Markdown; GitHub drops the backslash, Python-Markdown
keeps it. Here it is dropped from every code span of the built pages (a literal backslash before a pipe does not
occur elsewhere in the manual)."""

from __future__ import annotations

import re

CODE = re.compile(r"<code>(.*?)</code>", re.S)


def on_page_content(html: str, **_) -> str:
    return CODE.sub(lambda m: "<code>" + m.group(1).replace("\\|", "|") + "</code>", html)
