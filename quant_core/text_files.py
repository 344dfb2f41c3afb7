"""Reading a user's text file (calibration or evaluation text), refusing what cannot be text.

Both are checked before any model loads, so a missing, empty or binary file fails in a second
instead of after minutes of loading; each caller passes its own error type.
"""
from __future__ import annotations

from pathlib import Path

from .errors import QuantllmError


def read_text_file(path, what: str, error: type[QuantllmError], hint: str = "") -> str:
    """The UTF-8 text of ``path``; ``error(...)`` naming ``what`` if it is missing, empty or not text."""
    path = Path(path)
    hint = f"; {hint}" if hint else ""
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise error(f"{what} {path} {state}{hint}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start} is not): a binary file? "
                    f"give a plain text file") from None
    if "\x00" in text:
        raise error(f"{what} {path} holds NUL bytes: a binary or UTF-16 file? give UTF-8 text")
    if not text.strip():
        raise error(f"{what} {path} is empty: give a file with text")
    return text
