"""See and repair the Pacifica Notifications subscriptions (eventmatches) that feed the webhook.

Pacifica Notifications delivers each event once and disables a subscription for good on any
non-2xx answer or connection error (``disabled`` gets a timestamp, ``error`` the answer or the
exception text); no further event reaches Airflow until it is re-enabled. This module lists a
user's eventmatches with that state and re-enables the disabled ones, through the Notifications
REST API (``/eventmatch``, the owner named by the ``Http-Remote-User`` header); it also creates the
subscription in the first place (ingest events to the webhook, with its credentials)::

    export PACIFICA_WEBHOOK_PASSWORD=...  # the webhook connection's password (or, without --login, its token)
    python -m airflow_provider_pacifica.notifications subscribe --url http://127.0.0.1:8070 --user svc-airflow \
        --target-url https://airflow.example.org/pacifica/events --login pacifica-notify
    python -m airflow_provider_pacifica.notifications list   --url http://127.0.0.1:8070 --user svc-airflow
    python -m airflow_provider_pacifica.notifications enable --url http://127.0.0.1:8070 --user svc-airflow

Only eventmatches whose ``target_url`` points at the provider's webhook (path ending in
``/pacifica/events``) are considered, unless ``--target-url-prefix`` names another target or
``--all`` takes every eventmatch of the user. Re-enabling is ``PUT /eventmatch/<uuid>`` with
``{"disabled": null, "error": null}`` plus the eventmatch's own ``auth`` and ``extensions`` (which
Notifications' PUT would otherwise reset to ``{}``); the events Notifications did not deliver while the
subscription was disabled are not sent again (``pacifica-notifications-cmd eventretry <uuid>``
does that, on the Notifications host).

Plain Python (requests), no Airflow import. Subscription ``auth`` (the webhook's password or
token) is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

__all__ = [
    "DEFAULT_TIMEOUT",
    "INGEST_JSONPATH",
    "WEBHOOK_PATH",
    "EventMatch",
    "NotificationsClient",
    "NotificationsError",
    "is_webhook_target",
    "main",
    "webhook_eventmatches",
]

WEBHOOK_PATH = "/pacifica/events"  # where the provider's plugin listens
DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds
USER_HEADER = "Http-Remote-User"  # Notifications' default [notifications] user_header
# What metadata emits on an ingest (CloudEvents 0.1), in jsonpath2's syntax as Notifications evaluates it
INGEST_JSONPATH = '$[?( @["cloudEventsVersion"] = "0.1" and @["eventType"] = "org.pacifica.metadata.ingest" )]'
PASSWORD_ENV = "PACIFICA_WEBHOOK_PASSWORD"  # where `subscribe` reads the webhook's password or token


class NotificationsError(RuntimeError):
    """Notifications could not be reached, or answered with an unexpected status.

    :param message: what went wrong.
    :param status_code: Notifications' HTTP status, when it answered.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class EventMatch:
    """The parts of an eventmatch this tool shows (never its ``auth``)."""

    uuid: str
    name: str
    target_url: str
    disabled: str | None  # when Notifications disabled it, or None while it is enabled
    error: str | None  # the answer (or exception) that disabled it
    user: str | None = None
    deleted: str | None = None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> EventMatch:
        def text(key: str) -> str | None:
            value = record.get(key)
            return None if value in (None, "") else str(value)

        return cls(
            uuid=str(record.get("uuid", "")),
            name=text("name") or "",
            target_url=text("target_url") or "",
            disabled=text("disabled"),
            error=text("error"),
            user=text("user"),
            deleted=text("deleted"),
        )

    @property
    def is_disabled(self) -> bool:
        return self.disabled is not None or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "target_url": self.target_url,
            "state": "disabled" if self.is_disabled else "enabled",
            "disabled": self.disabled,
            "error": self.error,
        }


def is_webhook_target(target_url: str, prefix: str | None = None) -> bool:
    """Whether a ``target_url`` is the provider's webhook: it starts with ``prefix`` when one is
    given, else its path ends in ``/pacifica/events`` (any host, any ``?asset=`` query)."""
    if prefix is not None:
        return target_url.startswith(prefix)
    return urlsplit(target_url).path.rstrip("/").endswith(WEBHOOK_PATH)


class NotificationsClient:
    """A small client of Notifications' ``/eventmatch`` API, as one user.

    :param url: the Notifications base URL, e.g. ``http://127.0.0.1:8070``.
    :param user: the owner of the eventmatches, sent in ``user_header``.
    :param user_header: Notifications' ``[notifications] user_header`` (default ``Http-Remote-User``).
    :param timeout: ``(connect, read)`` seconds for every request.
    """

    def __init__(
        self,
        url: str,
        user: str,
        *,
        user_header: str = USER_HEADER,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False  # no proxy from the environment for a service on the same network
        self.headers = {user_header: user, "Accept": "application/json"}

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, self.url + path, headers=self.headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise NotificationsError(f"{method} {self.url}{path}: {err}") from None

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """One request; its JSON body, or :class:`NotificationsError` naming the status or the body."""
        response = self._request(method, path, **kwargs)
        if not 200 <= response.status_code < 300:
            raise NotificationsError(
                f"{method} {what} answered {response.status_code}: {response.text[:300]}", response.status_code
            )
        try:
            return response.json()
        except ValueError:
            raise NotificationsError(f"{method} {what} answered non-JSON: {response.text[:300]}") from None

    def eventmatches(self) -> list[EventMatch]:
        """All the user's eventmatches (soft-deleted ones left out).

        Notifications answers 403 for a list that would be empty, so a 403 is an empty list.
        """
        try:
            records = self._json("GET", "/eventmatch", "/eventmatch")
        except NotificationsError as err:
            if err.status_code == 403:
                return []
            raise
        if isinstance(records, Mapping):
            records = [records]
        if not isinstance(records, list):
            raise NotificationsError(f"GET /eventmatch answered {type(records).__name__}, expected a list")
        matches = [EventMatch.from_json(r) for r in records if isinstance(r, Mapping)]
        return [m for m in matches if m.deleted is None]

    def subscribe(
        self,
        name: str,
        target_url: str,
        *,
        login: str | None = None,
        password: str | None = None,
        token: str | None = None,
        jsonpath: str = INGEST_JSONPATH,
    ) -> EventMatch:
        """Create an eventmatch that delivers matching events to ``target_url``: ``POST /eventmatch``.

        With ``login``/``password`` Notifications sends basic auth; with ``token``, an
        ``Authorization: Bearer <token>`` header (the two webhook credentials the plugin accepts).
        """
        if login is not None and token is not None:
            raise ValueError("give a login and password, or a token, not both")
        body: dict[str, Any] = {"name": name, "jsonpath": jsonpath, "target_url": target_url}
        if login is not None:
            body["auth"] = {"type": "basic", "basic": {"username": login, "password": password or ""}}
        elif token is not None:
            body["auth"] = {"type": "header", "header": {"type": "Bearer", "credentials": token}}
        record = self._json("POST", "/eventmatch", "/eventmatch", json=body)
        if not isinstance(record, Mapping):
            raise NotificationsError(f"POST /eventmatch answered {type(record).__name__}, expected an object")
        return EventMatch.from_json(record)

    def enable(self, uuid: str) -> EventMatch:
        """Re-enable one eventmatch: ``PUT /eventmatch/<uuid>`` with ``{"disabled": null, "error": null}``.

        Notifications' PUT sets ``auth`` and ``extensions`` to ``{}`` when the body leaves them
        out (pacifica-notifications 0.5.2), which would silently strip the webhook's credentials
        (every later delivery a 401, and the subscription disabled again). So the eventmatch is
        read first and its ``auth`` and ``extensions`` are sent back unchanged.
        """
        path = f"/eventmatch/{quote(uuid, safe='')}"
        record = self._json("GET", path, f"/eventmatch/{uuid}")
        if not isinstance(record, Mapping):
            raise NotificationsError(f"GET /eventmatch/{uuid} answered {type(record).__name__}, expected an object")
        body = {"disabled": None, "error": None}
        body.update({key: record[key] for key in ("auth", "extensions") if record.get(key)})
        updated = self._json("PUT", path, f"/eventmatch/{uuid}", json=body)
        if not isinstance(updated, Mapping):  # re-enabled all the same; Notifications answers the object
            return EventMatch(uuid=uuid, name="", target_url="", disabled=None, error=None)
        return EventMatch.from_json(updated)


def webhook_eventmatches(
    matches: Iterable[EventMatch], *, prefix: str | None = None, every: bool = False
) -> list[EventMatch]:
    """The eventmatches of the provider's webhook (or all of them with ``every``)."""
    return [m for m in matches if every or is_webhook_target(m.target_url, prefix)]


def _table(matches: Sequence[EventMatch]) -> str:
    lines = []
    for m in matches:
        state = f"DISABLED since {m.disabled or '?'}" if m.is_disabled else "enabled"
        lines.append(f"{m.uuid}  {state}  {m.name!r} -> {m.target_url}")
        if m.error:
            lines.append(f"    error: {m.error[:300]}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help="Notifications base URL, e.g. http://127.0.0.1:8070")
    common.add_argument("--user", required=True, help="owner of the eventmatches (sent as Http-Remote-User)")
    common.add_argument("--user-header", default=USER_HEADER, help="Notifications' [notifications] user_header")
    common.add_argument(
        "--target-url-prefix",
        help=f"only eventmatches whose target_url starts with this (default: its path ends in {WEBHOOK_PATH})",
    )
    common.add_argument("--all", action="store_true", help="every eventmatch of the user, whatever its target")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT[1], help="read timeout in seconds (30)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_pacifica.notifications",
        description="List and re-enable the Pacifica Notifications subscriptions of the Airflow webhook.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="show the eventmatches and whether they are disabled")
    listing.add_argument("--check", action="store_true", help="exit with status 1 when one is disabled")
    subscribing = commands.add_parser(
        "subscribe",
        parents=[common],
        help=f"create the eventmatch that sends ingest events to the webhook; the password (with --login) or "
        f"the token (without) is read from ${PASSWORD_ENV}, never from the command line",
    )
    subscribing.add_argument("--target-url", required=True, help="the webhook, e.g. https://airflow/pacifica/events")
    subscribing.add_argument("--name", default="airflow-provider-pacifica webhook", help="the eventmatch's name")
    subscribing.add_argument("--login", help="basic-auth user of the webhook connection (else a bearer token)")
    subscribing.add_argument("--jsonpath", default=INGEST_JSONPATH, help="which events (default: every ingest)")
    enabling = commands.add_parser("enable", parents=[common], help="re-enable the disabled eventmatches")
    enabling.add_argument("--uuid", action="append", help="only this eventmatch (repeatable)")
    enabling.add_argument("--dry-run", action="store_true", help="show what would be re-enabled, change nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0, 1 (``list --check`` found a disabled one) or 2 (an error)."""
    args = _parser().parse_args(argv)
    client = NotificationsClient(
        args.url, args.user, user_header=args.user_header, timeout=(DEFAULT_TIMEOUT[0], args.timeout)
    )
    try:
        if args.command == "subscribe":
            return _subscribe(client, args)
        matches = webhook_eventmatches(client.eventmatches(), prefix=args.target_url_prefix, every=args.all)
        if args.command == "list":
            if args.json:
                print(json.dumps([m.to_dict() for m in matches], indent=2))
            else:
                print(_table(matches) if matches else f"no eventmatches of {args.user!r} for this webhook")
            return 1 if args.check and any(m.is_disabled for m in matches) else 0

        unknown = sorted(set(args.uuid or ()) - {m.uuid for m in matches})
        if unknown:
            raise NotificationsError(f"no such eventmatch of {args.user!r} for this webhook: {', '.join(unknown)}")
        wanted = [m for m in matches if m.is_disabled and (not args.uuid or m.uuid in args.uuid)]
        done = wanted if args.dry_run else [client.enable(m.uuid) for m in wanted]
        verb = "would re-enable" if args.dry_run else "re-enabled"
        if args.json:
            print(json.dumps({verb.replace(" ", "_"): [m.uuid for m in done]}, indent=2))
        else:
            for m in wanted:
                print(f"{verb} {m.uuid} {m.name!r} -> {m.target_url} (was disabled since {m.disabled or '?'})")
            if not wanted:
                print(f"nothing to re-enable: {len(matches)} eventmatch(es), none disabled")
        return 0
    except NotificationsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _subscribe(client: NotificationsClient, args: argparse.Namespace) -> int:
    secret = os.environ.get(PASSWORD_ENV)
    if not secret:
        raise NotificationsError(f"set ${PASSWORD_ENV} to the webhook's password (with --login) or token")
    match = client.subscribe(
        args.name,
        args.target_url,
        login=args.login,
        password=secret if args.login else None,
        token=None if args.login else secret,
        jsonpath=args.jsonpath,
    )
    if args.json:
        print(json.dumps(match.to_dict(), indent=2))
    else:
        print(f"subscribed {match.uuid} {match.name!r} -> {match.target_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
