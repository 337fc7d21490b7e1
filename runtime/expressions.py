"""Referring expressions as the runtime takes them: checked before any graph runs, and shown
shortened in messages."""

from __future__ import annotations

# How much of an expression a message shows: a 10,000-character text is not a log line.
SHOWN_CHARACTERS = 60


def shorten(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` quoted, cut to its first ``limit`` characters with its length when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_expressions(expressions: list[str] | str) -> list[str]:
    """The expressions as a list, each a non-empty string that encodes as UTF-8.

    Python strings can hold lone surrogates ("\\ud800", or undecodable bytes of a command
    line under ``surrogateescape``) that no tokenizer can encode; they are refused here with
    the expression's index rather than failing inside the tokenizer.

    Raises:
        ValueError: naming the index of the first bad expression.
    """
    if isinstance(expressions, str):
        expressions = [expressions]
    expressions = list(expressions)
    if not expressions:
        raise ValueError("no expressions given")
    for index, text in enumerate(expressions):
        if not isinstance(text, str):
            raise TypeError(f"expression {index} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"expression {index} is empty: {text!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"expression {index} cannot be encoded as UTF-8 ({error.reason}: "
                f"{text[error.start]!r} at character {error.start}): {shorten(text)}"
            ) from None
    return expressions
