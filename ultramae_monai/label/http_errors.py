"""Bad input as HTTP errors: an ``UltraMAEError`` raised inside a request becomes a 4xx with its one-line cause.

MONAI Label's endpoints call the app, its tasks and its datastore directly inside the FastAPI handlers, so an
``HTTPException`` raised there reaches the client as is and the server carries on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from ultramae_monai.errors import NotUltrasoundError, UltraMAEError, UnreadableFileError

__all__ = ["as_http", "http_status"]


def http_status(err: UltraMAEError) -> int:
    """415 for a file that is not (readable) ultrasound, 422 for content the operation cannot accept."""
    return 415 if isinstance(err, (NotUltrasoundError, UnreadableFileError)) else 422


@contextmanager
def as_http(not_found: bool = False, what: str = "") -> Iterator[None]:
    """Turn ``UltraMAEError`` into ``HTTPException``; with ``not_found``, answer 404 for ``what`` first."""
    if not_found:
        raise HTTPException(status_code=404, detail=f"{what} not found")
    try:
        yield
    except UltraMAEError as e:
        raise HTTPException(status_code=http_status(e), detail=str(e)) from e
    except SystemExit as e:  # the bundle's entry points exit with "error: <file>: <cause>" on bad input
        raise HTTPException(status_code=422, detail=str(e.code)) from e
