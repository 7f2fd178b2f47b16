"""Bearer tokens for writes and Socket.IO connections, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from bridge.config import Config, Secret


def _matches(token: str, secrets: Iterable[Secret]) -> bool:
    given = token.encode()
    found = False
    for secret in secrets:
        # Compare against every token (no early exit) so timing tells nothing.
        found |= hmac.compare_digest(given, secret.value.encode())
    return found


def can_write(config: Config, token: str | None) -> bool:
    """True when no tokens are configured or the token is a write token."""
    if not config.api_tokens:
        return True
    return token is not None and _matches(token, config.api_tokens)


def can_read(config: Config, token: str | None) -> bool:
    """True when reads are open, or the token is a read or write token."""
    if config.reads_open or not (config.api_tokens or config.read_tokens):
        return True
    return token is not None and _matches(token, (*config.api_tokens, *config.read_tokens))


def is_known(config: Config, token: str | None) -> bool:
    """True when the token is one of the configured read or write tokens."""
    return token is not None and _matches(token, (*config.api_tokens, *config.read_tokens))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
