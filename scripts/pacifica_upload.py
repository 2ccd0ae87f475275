"""Upload local files through the real Pacifica ingest, the way pacifica-cli 0.5.2 does it.

Run by ``scripts/pacifica-stack upload`` with the STACK venv's python (pacifica-cli and
pacifica-uploader are installed there, not in the project venv). It uses Pacifica's own code for
every step that decides what reaches ingest:

1. the metadata is resolved by pacifica-cli's ``query_main`` from the CLI's standard uploader.json
   (logon, project, instrument, "User of Record"), each value asked of policy ``/uploader`` as the
   logon user, exactly as a non-interactive ``pacifica-cli upload`` does;
2. pacifica-uploader's ``Bundler`` writes the tar: ``data/<path>`` members (POSIX tar, PAX headers
   for non-ASCII names), then ``metadata.txt`` with a ``Files`` record (name, subdir, size,
   mimetype, sha1, ctime/mtime) per file;
3. pacifica-uploader's ``Uploader`` POSTs it to ingest ``/upload`` and reads ``/get_state``.

Differences from the CLI, none of which changes what ingest receives: the paths in the bundle are
relative to each source directory (the CLI uses the path as typed), the tar goes through a file
instead of a pipe (so its size is known without the CLI's second bundling pass), no progress
thread (the CLI's sleeps 2 s per pass), and the state is polled every 0.2 s instead of 1 s.

Input: one JSON object on stdin (``policy_url``, ``ingest_url``, ``logon``, ``tmpdir``, ``timeout``
and ``files``: a list of ``[path on disk, path in the bundle]``). Output: one JSON object on stdout,
``{"job_id": N, "state": {...}}``; exit 1 when the job did not end in "ingest metadata 100".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

from pacifica.cli.query import query_main
from pacifica.uploader import Uploader
from pacifica.uploader.bundler import Bundler
from pacifica.uploader.metadata import MetaUpdate, metadata_decode

# pacifica-cli's uploader.json (its README's example), values left to the policy queries.
UPLOADER_CONFIG = [
    {
        "destinationTable": "Transactions.submitter",
        "displayFormat": "{_id} - {first_name} {last_name}",
        "displayTitle": "Currently Logged On",
        "displayType": "logged_on",
        "metaID": "logon",
        "queryDependency": {},
        "queryFields": ["first_name", "last_name", "_id"],
        "sourceTable": "users",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "Transactions.project",
        "displayFormat": "{_id} - {title}",
        "displayTitle": "Project ID",
        "displayType": "select",
        "metaID": "project",
        "queryDependency": {"instrument_id": "instrument"},
        "queryFields": ["_id", "title"],
        "sourceTable": "projects",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "Transactions.instrument",
        "displayFormat": "{_id} {name_short} - {display_name}",
        "displayTitle": "Instrument ID",
        "displayType": "select",
        "metaID": "instrument",
        "queryDependency": {},
        "queryFields": ["_id", "name_short", "display_name"],
        "sourceTable": "instruments",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "TransactionKeyValue",
        "displayFormat": "{_id} - {first_name} {last_name}",
        "displayTitle": "User ID the data is for",
        "displayType": "select",
        "key": "User of Record",
        "metaID": "user-of-record",
        "queryDependency": {"project_id": "project"},
        "queryFields": ["first_name", "last_name", "_id"],
        "sourceTable": "users",
        "value": "",
        "valueField": "_id",
    },
]


def finished(state: dict) -> bool:
    """pacifica-cli's own test (upload.check): not OK, or the last task at 100 %."""
    if state.get("state") != "OK":
        return True
    return state.get("task") == "ingest metadata" and int(float(state.get("task_percent", 0))) == 100


def main() -> int:
    spec = json.load(sys.stdin)
    # As pacifica-cli's set_environment_vars does, for PolicyQuery and Uploader.
    os.environ["POLICY_UPLOADER_URL"] = f"{spec['policy_url']}/uploader"
    os.environ["POLICY_INGEST_URL"] = f"{spec['policy_url']}/ingest"
    os.environ["INGEST_UPLOAD_URL"] = f"{spec['ingest_url']}/upload"
    os.environ["INGEST_STATUS_URL"] = f"{spec['ingest_url']}/get_state"

    md_update = MetaUpdate(spec["logon"])
    md_update.extend(metadata_decode(json.dumps(UPLOADER_CONFIG)))
    args = argparse.Namespace(interactive=False)
    for obj in md_update:
        setattr(args, f"{obj.metaID}_regex", None)
        setattr(args, obj.metaID, None)
    with contextlib.redirect_stdout(sys.stderr):  # "Setting project to 1234a." and the like
        md_update = query_main(md_update, args)

    file_data = []
    for disk_path, bundle_path in spec["files"]:
        stat = os.stat(disk_path)
        file_data.append(
            {
                "name": f"data/{bundle_path}",
                "size": stat.st_size,
                "mtime": stat.st_mtime,
                "fileobj": open(disk_path, "rb"),  # noqa: SIM115 - the bundler reads and we close below
            }
        )
    handles = [entry["fileobj"] for entry in file_data]
    with tempfile.NamedTemporaryFile(dir=spec["tmpdir"], prefix="bundle-", suffix=".tar") as bundle:
        try:
            Bundler(md_update, file_data).stream(bundle)
        finally:
            for handle in handles:
                handle.close()
        bundle.flush()
        size = bundle.tell()
        bundle.seek(0)
        uploader = Uploader(auth=md_update.get_auth())
        job_id = uploader.upload(bundle, content_length=size)

    deadline = time.monotonic() + float(spec["timeout"])
    state = uploader.getstate(job_id)
    while not finished(state) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = uploader.getstate(job_id)
    json.dump({"job_id": job_id, "state": state}, sys.stdout)
    sys.stdout.write("\n")
    ok = state.get("state") == "OK" and finished(state)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
