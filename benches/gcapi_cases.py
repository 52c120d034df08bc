"""The baseline of `cargo bench --bench import_wait`: cases sent as a gcapi script sends them, one
`add_case_to_archive` call after another (each uploads its files, then sets the values, and does not wait
for the import), then read back until the platform shows every value of every case.

Environment: GC_BASE_URL (ends in /api/v1/), GC_TOKEN, GC_ARCHIVE (slug), GC_CASES (a JSON file: a list
of {"title": str, "values": [{"socket": slug, "files": [paths]} | {"socket": slug, "file": path} |
{"socket": slug, "value": json}]}).

Prints one JSON object on its last line: {"seconds": until every value was shown, "sent": the loop alone}.
"""

import json
import os
import time
import warnings

import gcapi
from gcapi import SocketValueSpec

warnings.filterwarnings("ignore")  # the sandbox's self-signed certificate


def spec(v):
    if "files" in v:
        return SocketValueSpec(socket_slug=v["socket"], files=v["files"])
    if "file" in v:
        return SocketValueSpec(socket_slug=v["socket"], file=v["file"])
    return SocketValueSpec(socket_slug=v["socket"], value=v["value"])


def shown(item):
    # Read responses embed the whole socket; write responses name it by slug.
    return {v.interface if isinstance(v.interface, str) else v.interface.slug for v in item.values}


def main():
    client = gcapi.Client(base_url=os.environ["GC_BASE_URL"], token=os.environ["GC_TOKEN"], verify=False)
    archive = os.environ["GC_ARCHIVE"]
    with open(os.environ["GC_CASES"]) as f:
        cases = json.load(f)
    start = time.monotonic()
    created = []
    for case in cases:
        item = client.add_case_to_archive(
            archive_slug=archive, values=[spec(v) for v in case["values"]], title=case["title"]
        )
        created.append((item.pk, {v["socket"] for v in case["values"]}))
    sent = time.monotonic() - start
    # Read back as often as a script reasonably could: every item, every 100 ms, until all are there.
    pending = created
    while pending:
        pending = [(pk, s) for pk, s in pending if not s <= shown(client.archive_items.detail(pk=pk))]
        if pending:
            time.sleep(0.1)
    print(json.dumps({"seconds": time.monotonic() - start, "sent": sent}))


if __name__ == "__main__":
    main()
