"""Round trip of the official Python client (gcapi) against the sandbox.

Environment: GC_BASE_URL (https, ends in /api/v1/), GC_TOKEN (an editor of demo-archive and
demo-reader-study), GC_WORKDIR (scratch folder), optionally GC_IMAGE_FILES (paths, separated by
os.pathsep, of one real image for the "ct-image" socket).

Prints one JSON object with the created pks on the last line of stdout; any failed check raises.
"""

import json
import os
import sys
import warnings
from pathlib import Path

import gcapi
from gcapi import SocketValueSpec
from gcapi.exceptions import SocketNotFound
from gcapi_support import check, poll

warnings.filterwarnings("ignore")  # self-signed certificate

BASE = os.environ["GC_BASE_URL"]
TOKEN = os.environ["GC_TOKEN"]
WORK = Path(os.environ["GC_WORKDIR"])
IMAGES = [p for p in os.environ.get("GC_IMAGE_FILES", "").split(os.pathsep) if p]

def slugs(item):
    # Write responses name the socket by slug, read responses embed the whole socket.
    return {(v.interface if isinstance(v.interface, str) else v.interface.slug): v for v in item.values}


def wait_for(fetch, sockets, what):
    """Poll until every socket in `sockets` has a value (the server attaches uploads asynchronously)."""
    has_all = lambda item: all(s in slugs(item) for s in sockets)  # noqa: E731
    missing = lambda item: sorted(set(sockets) - set(slugs(item)))  # noqa: E731
    return poll(fetch, has_all, lambda item: f"{what}: sockets {missing(item)} never got a value")


def main():
    client = gcapi.Client(base_url=BASE, token=TOKEN, verify=False)
    WORK.mkdir(parents=True, exist_ok=True)
    report = WORK / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n% gcapi interop\n" + bytes(range(256)) * 64 + b"\n%%EOF\n")
    results_value = {"lesions": [1, 2, 3], "ok": True}

    # --- archive: value, file and JSON-as-file sockets, with a title -----------------------------
    values = [
        SocketValueSpec(socket_slug="lung-volume", value=1.9),
        SocketValueSpec(socket_slug="notes", value="first read"),
        SocketValueSpec(socket_slug="report", file=report),
        SocketValueSpec(socket_slug="results-json", value=results_value),
    ]
    if IMAGES:
        values.append(SocketValueSpec(socket_slug="ct-image", files=IMAGES))
    created = client.add_case_to_archive(archive_slug="demo-archive", values=values, title="gcapi-case-1")
    check(created.title == "gcapi-case-1", f"title {created.title!r}")
    sync = slugs(created)
    check(sync["lung-volume"].value == 1.9, "the value is set synchronously")
    check(sync["notes"].value == "first read", "the string value is set synchronously")
    check("report" not in sync, "files are attached asynchronously, not in the PATCH response")

    fetch_item = lambda: client.archive_items.detail(pk=created.pk)  # noqa: E731
    asynchronous = ["report", "results-json"] + (["ct-image"] if IMAGES else [])
    item = wait_for(fetch_item, asynchronous, "archive item")
    have = slugs(item)
    check(have["report"].file and have["report"].file.startswith(BASE.split("/api/")[0]), "file URL is absolute")
    downloaded = client(url=have["report"].file, follow_redirects=True)
    check(downloaded.content == report.read_bytes(), "the stored report downloads unchanged")
    stored_json = client(url=have["results-json"].file, follow_redirects=True)
    check(json.loads(stored_json.content) == results_value, "JSON stored as a file")
    image_pk = None
    if IMAGES:
        image_url = have["ct-image"].image
        image = client.images.detail(api_url=image_url)
        check(image.files, "the image has files")
        image_pk = image.pk

    # --- update the archive item: new value and a new title --------------------------------------
    updated = client.update_archive_item(
        archive_item_pk=created.pk,
        values=[SocketValueSpec(socket_slug="lesion-count", value=3)],
        title="gcapi-case-1-updated",
    )
    check(updated.title == "gcapi-case-1-updated", "title updated")
    check(slugs(updated)["lesion-count"].value == 3, "lesion-count set")
    check(slugs(updated)["lung-volume"].value == 1.9, "other sockets kept by PATCH")

    # --- reader study ----------------------------------------------------------------------------
    ds = client.add_case_to_reader_study(
        reader_study_slug="demo-reader-study",
        values=[
            SocketValueSpec(socket_slug="is-abnormal", value=True),
            SocketValueSpec(socket_slug="report", file=report),
        ],
        title="gcapi-ds-1",
    )
    check(ds.title == "gcapi-ds-1", "display set title")
    check(ds.order is not None and ds.order > 0 and ds.order % 10 == 0, f"automatic order {ds.order}")
    ds_after = wait_for(lambda: client.reader_studies.display_sets.detail(pk=ds.pk), ["report"], "display set")
    check(slugs(ds_after)["is-abnormal"].value is True, "bool value")

    ds_updated = client.update_display_set(
        display_set_pk=ds.pk,
        values=[SocketValueSpec(socket_slug="diagnosis", value="malignant")],
        title="gcapi-ds-1-updated",
        order=55,
    )
    check(ds_updated.order == 55, "explicit order")
    check(slugs(ds_updated)["diagnosis"].value == "malignant", "choice value")

    # --- the documented error for an unknown socket: nothing is created --------------------------
    before = client.archive_items.page(params={"archive": created.archive.rstrip("/").split("/")[-1]}).total_count
    try:
        client.add_case_to_archive(
            archive_slug="demo-archive",
            values=[SocketValueSpec(socket_slug="no-such-socket", value=1)],
            title="never",
        )
    except ValueError as e:
        check(str(e).startswith("no-such-socket is not an existing socket."), f"message: {e}")
        check(isinstance(e.__cause__, SocketNotFound), "caused by SocketNotFound")
    else:
        raise AssertionError("an unknown socket must raise ValueError")
    after = client.archive_items.page(params={"archive": created.archive.rstrip("/").split("/")[-1]}).total_count
    check(before == after, "no item is created for an unknown socket")

    print(
        json.dumps(
            {
                "archive_item": created.pk,
                "display_set": ds.pk,
                "display_set_order": ds.order,
                "image": image_pk,
                "report_size": report.stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        print(f"interop failure: {type(e).__name__}: {e}", file=sys.stderr)
        raise
