"""Storage URLs as they may be shown, and the check that keeps a password out of error lines.

Plain string handling, no SQLAlchemy or torch: the command line checks the URL before anything heavy loads.
A host never holds '@', so the last '@' of a URL ends its credentials.  SQLAlchemy splits at the first one
instead: a password with an unencoded '@' became part of the host, and the driver's "can't connect to
'<rest of the password>@host'" printed it.
"""
from __future__ import annotations

import re

# query arguments that may carry a secret (drivers accept e.g. ?password=...)
_SECRET_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|secret|token)[^=&]*=)[^&]*")


def credentials(url: str) -> tuple[str, str | None, str | None, str] | None:
    """(scheme, user, password, host and the rest) split at the last '@'; None without credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.startswith("sqlite"):  # a file path may hold '@'; no credentials there
        return None
    at = rest.rfind("@")
    if at < 0:
        return None
    userinfo, host = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, host


def redact(url: str | None) -> str | None:
    """The URL as it may appear in logs: the password is never shown, whatever it holds."""
    if url is None:
        return None
    parts = credentials(url)
    if parts is None:
        return _SECRET_QUERY.sub(r"\1***", url)
    scheme, user, password, host = parts
    userinfo = user if password is None else f"{user}:***"
    return f"{scheme}://{userinfo}@" + _SECRET_QUERY.sub(r"\1***", host)


def check_url(url: str) -> str:
    """Refuse a password with an unencoded '@': SQLAlchemy would take its tail for the host, try to connect
    there and print it.  Percent-encoded ('%40'), it reaches the server intact."""
    parts = credentials(url)
    if parts is not None and parts[2] is not None and "@" in parts[2]:
        raise ValueError(f"storage URL {redact(url)}: its password holds '@', which a URL must percent-encode "
                         "(write each '@' in it as %40)")
    return url
