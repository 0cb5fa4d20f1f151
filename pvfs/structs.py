"""One place that turns construct's exceptions into the format's own error."""

from __future__ import annotations

from typing import Any

from construct import ConstructError

from .errors import FormatError


def parse(struct: Any, data: bytes, error: type[Exception] = FormatError, what: str = "structure", offset: int | None = None) -> Any:
    """``struct.parse(data)``; a ConstructError becomes ``error`` with the offset."""
    try:
        return struct.parse(data)
    except ConstructError as e:
        where = f" at {offset:#x}" if offset is not None else ""
        reason = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise error(f"bad {what}{where}: {reason}") from None


def guid_str(raw: bytes) -> str:
    """A GUID stored mixed-endian (EFI, Microsoft) as its usual text form."""
    import uuid  # here: every backend's start-up imports this module

    return str(uuid.UUID(bytes_le=bytes(raw)))
