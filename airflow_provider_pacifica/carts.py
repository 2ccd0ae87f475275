"""What Cartd's answers mean: cart states, failure messages, uids.

Plain Python, no Airflow import. Cartd's REST protocol (pacifica.md §2): ``POST /<uid>`` creates a
cart (201), ``HEAD /<uid>`` reports its state in ``X-Pacifica-Status`` / ``X-Pacifica-Message``
(204 alive, 404 unknown, 500 failed), ``GET /<uid>?filename=<name>`` streams the tar (202 while
not ready), ``DELETE /<uid>`` removes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_pacifica.exceptions import CartdError, CartdTransientError, InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Mapping

TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})
MAX_MESSAGE_LENGTH = 1000  # X-Pacifica-Message can hold a 3 KB remote traceback

# Cartd's own failure texts (pacifica-cartd 0.7 tasks.py and utils.py) for faults of the archive
# or of Cartd's disk, which pass: the archive restarting, a tape library busy, the cache full
# until its LRU frees space. A hash mismatch, bad file ids or any text not listed here fail for good.
TRANSIENT_CART_FAILURES = (
    "Failed to stage with error",  # POST to the archive interface failed
    "Failed to status file with error",  # HEAD to the archive interface failed
    "Not enough space to download file",
    "Failed to get available file space with error",
    "Failed directory create with error",
    "Failed to decode",  # the archive answered something else than its JSON (a proxy's error page)
)
# "Failed to pull with error: <requests error>" is transient too, but the same prefix also carries
# the one permanent pull failure:
PERMANENT_CART_FAILURES = ("File hash does not match provided hash", "Error parsing file Ids")


def is_transient_cart_failure(message: str) -> bool:
    """Whether a failed cart's ``X-Pacifica-Message`` names a fault that a later attempt may not meet."""
    message = " ".join(message.split())  # some of Cartd's texts hold a newline and an indent
    if any(text in message for text in PERMANENT_CART_FAILURES):
        return False
    return "Failed to pull with error" in message or any(text in message for text in TRANSIENT_CART_FAILURES)


@dataclass(frozen=True)
class CartStatus:
    """What ``HEAD /<uid>`` said about a cart.

    :param cart_uid: the cart.
    :param state: ``ready``, ``error``, ``missing``, or what Cartd reported while it works
        (``staging``, ``waiting``, or any state it may add: unknown states count as pending).
    :param message: Cartd's ``X-Pacifica-Message``, shortened to 1000 characters.
    """

    cart_uid: str
    state: str
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failed(self) -> bool:
        return self.state == "error"

    @property
    def missing(self) -> bool:
        return self.state == "missing"

    @property
    def pending(self) -> bool:
        return self.state not in ("ready", "error", "missing")

    @property
    def transient(self) -> bool:
        """A failed cart whose message names a passing fault (see :func:`is_transient_cart_failure`)."""
        return self.failed and is_transient_cart_failure(self.message)


def shorten(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """One line of at most ``limit`` characters (Cartd's messages carry tracebacks)."""
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def parse_head_response(cart_uid: str, status_code: int, headers: Mapping[str, str]) -> CartStatus:
    """Turn a ``HEAD /<uid>`` answer into a :class:`CartStatus`, or raise ``CartdError``."""
    state = (headers.get("X-Pacifica-Status") or "").strip().lower()
    message = shorten(headers.get("X-Pacifica-Message") or "")
    if status_code == 204 and state:
        if state in ("error", "missing"):  # a 204 never carries these; keep them distinct from 500/404
            state = "staging"
        return CartStatus(cart_uid, state, message)
    if status_code == 404:
        return CartStatus(cart_uid, "missing", message or f"No cart with uid {cart_uid} found")
    if status_code == 500 and state == "error":
        return CartStatus(cart_uid, "error", message or "Cartd reports the cart failed")
    raise error_for_status(status_code, f"HEAD cart {cart_uid}", message)


def error_for_status(status_code: int, action: str, detail: str = "") -> CartdError:
    """The exception type for an HTTP status that the protocol does not expect."""
    text = f"{action}: Cartd answered HTTP {status_code}" + (f": {shorten(detail)}" if detail else "")
    if status_code in TRANSIENT_STATUS_CODES:
        return CartdTransientError(text, status_code)
    if status_code in (401, 403):
        return CartdError(text + " (check the connection's credentials)", status_code)
    return CartdError(text, status_code)


def validate_cart_uid(cart_uid: str) -> None:
    """A cart uid is one URL path segment Cartd accepts: letters, digits, ``-``, ``_`` and ``.``."""
    if (
        not isinstance(cart_uid, str)
        or not cart_uid
        or len(cart_uid) > 128
        or cart_uid in (".", "..")
        or not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in cart_uid)
    ):
        raise InvalidInputError(f"invalid cart uid {cart_uid!r}: use 1-128 of A-Z a-z 0-9 - _ .")


def derive_cart_uid(identity: Mapping[str, Any], prefix: str = "airflow") -> str:
    """A cart uid that is the same for the same ``identity`` (JSON-able: e.g. dag, run, task and
    the file list), so a retry finds the cart its first attempt created instead of staging another."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:40]}"
