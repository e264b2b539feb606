"""Escaping of user-supplied names (models, modules, runs) for Markdown text and tables. No torch.

A class or module name can hold ``|`` (breaks a table row), a newline (ends it) or ``<script>``
(TensorBoard renders HTML). Every renderer passes names through :func:`escape_markdown` first.
"""

from __future__ import annotations

__all__ = ["escape_markdown", "markdown_code"]

# "&" first, so that the entities below are not escaped twice
_REPLACEMENTS = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("\r\n", " "), ("\n", " "), ("\r", " "))


def escape_markdown(text: object) -> str:
    """``text`` as one line of literal Markdown: table pipes and HTML escaped, line breaks turned into spaces.

    The result is safe in a table cell, a heading and a code span inside a table (GitHub and TensorBoard read
    ``\\|`` there as a literal pipe). Underscores are kept: names like ``layer_1`` read as they are.

    Args:
        text: a name or message (anything ``str()`` accepts).

    Example::

        escape_markdown("A|b\\n<script>")  # 'A\\|b &lt;script&gt;'
    """
    out = str(text)
    for old, new in _REPLACEMENTS:
        out = out.replace(old, new)
    return out


def markdown_code(name: object) -> str:
    """``name`` as a code span (```layer1```) when it is plain; escaped text when it holds a character a code span
    cannot carry in every renderer (a pipe splits a table cell on GitHub, ``\\|`` shows its backslash in
    TensorBoard's code spans; HTML and newlines as in :func:`escape_markdown`).

    Args:
        name: a module or operator name.
    """
    text = str(name)
    if any(char in text for char in "|<>&`\n\r\\"):
        return escape_markdown(text)
    return f"`{text}`"
