"""Checks on request text that hold below any web framework (the laws and the HTTP edge share them)."""


def has_lone_surrogate(text: str) -> bool:
    """JSON can carry ``"\\ud800"``, which no UTF-8 encoder, tokenizer or JSON writer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
