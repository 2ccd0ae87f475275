"""Provider metadata that Airflow discovers through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_pacifica import __version__

INTEGRATION = "Pacifica Cartd"
METADATA_INTEGRATION = "Pacifica Metadata"


def _text(label: str, description: str, *, secret: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if secret:
        schema["format"] = "password"
    return {"label": label, "description": description, "schema": schema}


def _number(
    label: str, description: str, default: float, *, integer: bool = False, positive: bool = False
) -> dict[str, Any]:
    kind = "integer" if integer else "number"
    # The same bounds as connection.py checks: a timeout of 0 would never let a request finish.
    bound = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    return {
        "label": label,
        "description": description,
        "schema": {"type": [kind, "null"], **bound, "default": default},
    }


def _option(description: str, default: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "version_added": "0.1.0", "type": kind, "example": None, "default": default}


CONN_FIELDS: dict[str, Any] = {
    "token": _text("Bearer token", "Sent as 'Authorization: Bearer <token>' (instead of login/password).", secret=True),
    "client_cert": _text("Client certificate", "Path of a PEM certificate for TLS client authentication."),
    "client_key": _text("Client key", "Path of the certificate's private key, if not in the certificate file."),
    "ca_bundle": _text("CA bundle", "Path of a CA bundle to verify the server certificate."),
    "verify": {
        "label": "Verify TLS",
        "description": "Verify the server certificate (turn off only for testing).",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "connect_timeout": _number("Connect timeout (s)", "Seconds to wait for a connection.", 10, positive=True),
    "read_timeout": _number("Read timeout (s)", "Seconds to wait for each read from the server.", 60, positive=True),
    "proxies": {
        "label": "Proxies",
        "description": 'JSON object, e.g. {"https": "http://proxy.example.org:3128"}.',
        "schema": {"type": ["object", "string", "null"], "format": "json"},
    },
    "max_retries": _number("Max retries", "Retries after a transient fault (timeouts, 429, 502-504).", 3, integer=True),
    "retry_backoff": _number(
        "Retry backoff (s)", "urllib3 backoff factor: retry n waits factor x 2^(n-1) s (the first at once), <= 30 s.", 1
    ),
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider's hooks, triggers, sensors, operators and connection type."""
    return {
        "package-name": "airflow-provider-pacifica",
        "versions": [__version__],
        "name": "Pacifica",
        "description": "Download Pacifica data through Cartd carts: deferrable waits, verified atomic downloads.",
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://github.com/pacifica/pacifica-cartd",
                "tags": ["service"],
            },
            {
                "integration-name": METADATA_INTEGRATION,
                "external-doc-url": "https://github.com/pacifica/pacifica-metadata",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_pacifica.hooks.cartd"]},
            {"integration-name": METADATA_INTEGRATION, "python-modules": ["airflow_provider_pacifica.hooks.metadata"]},
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_pacifica.triggers.cartd"]},
            {"integration-name": METADATA_INTEGRATION, "python-modules": ["airflow_provider_pacifica.triggers.ingest"]},
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_pacifica.sensors.cartd"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_pacifica.operators.download"],
            }
        ],
        # No "plugins" here: the webhook plugin is registered once, by the "airflow.plugins" entry point
        # (pyproject.toml), which Airflow 3.3 always loads; provider-info plugins are loaded only with
        # [core] lazy_discover_providers = False, and a second copy is then an import error.
        "asset-uris": [
            {
                "schemes": ["pacifica"],
                "handler": "airflow_provider_pacifica.assets.sanitize_uri",
                "to_openlineage_converter": "airflow_provider_pacifica.openlineage.convert_asset_to_openlineage",
            }
        ],
        "config": {
            "pacifica": {
                "description": "The Pacifica Notifications webhook mounted on the api-server at /pacifica/events, "
                "and where the example DAGs download to.",
                "options": {
                    "webhook_enabled": _option(
                        "Mount the webhook (POST /pacifica/events) on the api-server. When false the plugin "
                        "mounts nothing and the path answers 404.",
                        "True",
                        "boolean",
                    ),
                    "webhook_conn_id": _option(
                        "Connection holding the webhook's credentials: login/password for basic auth and/or "
                        "extra 'token' for a bearer token. Without them every event is refused.",
                        "pacifica_webhook_default",
                    ),
                    "webhook_credentials_cache_seconds": _option(
                        "Seconds the webhook keeps the connection's credentials before looking them up again "
                        "(one secrets-backend call per period, not per request); a changed password takes effect "
                        "within this time. 0 looks them up on every request.",
                        "30",
                        "float",
                    ),
                    "webhook_asset_uri": _option(
                        "Asset on which received ingest events are recorded, unless webhook_asset_by_source maps "
                        "the event's source or a ?asset= query chooses another configured ingest asset.",
                        "pacifica://metadata/ingest",
                    ),
                    "webhook_asset_by_source": _option(
                        "JSON object mapping a CloudEvent source (one Pacifica deployment) to the asset URI its "
                        'events are recorded on, e.g. {"/pacifica/metadata/ingest": "pacifica://site-a/ingest"}; '
                        "other sources use webhook_asset_uri.",
                        "",
                    ),
                    "webhook_allowed_assets": _option(
                        "Further asset URIs (comma or space separated) that a subscription's ?asset= may choose. "
                        "?asset= may name only these, webhook_asset_uri and the values of "
                        "webhook_asset_by_source; any other asset is refused with 400.",
                        "",
                    ),
                    "webhook_partition_events": _option(
                        "Record each event as its own asset partition, keyed by its event id: a DAG scheduled "
                        "with PartitionedAssetTimetable gets exactly one run per event, even for a burst (a plain "
                        "schedule=[asset] batches events and can leave some waiting, apache/airflow#56050). "
                        "Airflow queues partitioned events only for partition-aware DAGs: set False when DAGs "
                        "with a plain asset schedule consume these events.",
                        "True",
                        "boolean",
                    ),
                    "webhook_max_body_bytes": _option(
                        "Largest accepted request body; larger ones get 413.", str(4 * 1024 * 1024), "integer"
                    ),
                    "download_root": _option(
                        "Where the example DAGs download to, read on the worker when a task runs: an absolute "
                        "path on storage every worker sees, or a URL such as s3://bucket/prefix (object storage, "
                        "through download_conn_id). Empty: $PACIFICA_DOWNLOAD_ROOT, else "
                        "$AIRFLOW_HOME/pacifica-downloads.",
                        "",
                    ),
                    "download_conn_id": _option(
                        "Connection of the object store that download_root names (e.g. an 'aws' connection whose "
                        "extra endpoint_url names an S3-compatible endpoint). Empty: the backend's own defaults.",
                        "",
                    ),
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "pacifica_cartd",
                "hook-class-name": "airflow_provider_pacifica.hooks.cartd.PacificaCartdHook",
                "hook-name": "Pacifica Cartd",
                "ui-field-behaviour": {
                    "hidden-fields": [],
                    "relabeling": {"host": "Cartd host", "schema": "Scheme (http or https)"},
                    "placeholders": {
                        "host": "cartd.example.org",
                        "schema": "https",
                        "port": "8081",
                        "login": "basic-auth user (optional)",
                        "password": "basic-auth password (optional)",
                    },
                },
                "conn-fields": CONN_FIELDS,
            },
            {
                "connection-type": "pacifica_metadata",
                "hook-class-name": "airflow_provider_pacifica.hooks.metadata.PacificaMetadataHook",
                "hook-name": "Pacifica Metadata",
                "ui-field-behaviour": {
                    "hidden-fields": [],
                    "relabeling": {"host": "Metadata host", "schema": "Scheme (http or https)"},
                    "placeholders": {
                        "host": "metadata.example.org",
                        "schema": "https",
                        "port": "8121",
                        "login": "basic-auth user (optional)",
                        "password": "basic-auth password (optional)",
                    },
                },
                "conn-fields": CONN_FIELDS,  # the same extras as pacifica_cartd
            },
        ],
    }
