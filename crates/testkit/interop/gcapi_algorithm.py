"""gcapi runs an algorithm on the sandbox: start_algorithm_job, poll the job, read its outputs.

Environment: GC_BASE_URL (https, ends in /api/v1/), GC_TOKEN (a user of "lung-volume-estimator"),
GC_WORKDIR (scratch folder), GC_IMAGE_FILES (paths, separated by os.pathsep, of one real image for the
"ct-image" socket).

Prints one JSON object on the last line of stdout; any failed check raises.
"""

import hashlib
import json
import os
import warnings
from pathlib import Path

import gcapi
from gcapi import SocketValueSpec
from gcapi_support import check, poll

warnings.filterwarnings("ignore")  # self-signed certificate

BASE = os.environ["GC_BASE_URL"]
TOKEN = os.environ["GC_TOKEN"]
WORK = Path(os.environ["GC_WORKDIR"])
IMAGES = [p for p in os.environ["GC_IMAGE_FILES"].split(os.pathsep) if p]


def until_done(client, pk):
    statuses = []

    def fetch():
        job = client.algorithm_jobs.detail(pk=pk)
        if not statuses or statuses[-1] != job.status:
            statuses.append(job.status)
        return job

    ended = lambda job: job.status in ("Succeeded", "Failed", "Cancelled")  # noqa: E731
    job = poll(fetch, ended, lambda _: f"job {pk} never ended: {statuses}")
    return job, statuses


def main():
    client = gcapi.Client(base_url=BASE, token=TOKEN, verify=False)
    WORK.mkdir(parents=True, exist_ok=True)

    algorithm = client.algorithms.detail(slug="lung-volume-estimator")
    check(len(algorithm.interfaces) == 2, f"interfaces {algorithm.interfaces}")
    check([s.slug for s in algorithm.interfaces[0].inputs] == ["ct-image"], "first interface inputs")

    # --- an uploaded image --------------------------------------------------------------------
    created = client.start_algorithm_job(
        algorithm_slug="lung-volume-estimator",
        inputs=[SocketValueSpec(socket_slug="ct-image", files=IMAGES)],
    )
    check(created.status == "Validating inputs", f"status at creation {created.status!r}")
    job, statuses = until_done(client, created.pk)
    check(job.status == "Succeeded", f"{job.status}: {statuses}")
    check(job.algorithm == algorithm.api_url, "the job links its algorithm")
    outputs = {o.interface.slug: o for o in job.outputs}
    check(sorted(outputs) == ["generic-medical-image", "lung-volume", "results-json"], f"{sorted(outputs)}")

    # gcapi's own downloader writes every output at its socket's relative path.
    out_dir = WORK / "outputs"
    for value in job.outputs:
        client.download_socket_value(value, output_directory=out_dir)
    volume = json.loads((out_dir / "lung-volume.json").read_text())
    summary = json.loads((out_dir / "results.json").read_text())
    image_dir = out_dir / "images" / "generic-medical-image"
    image_files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in image_dir.iterdir()}
    check(image_files, "the image output downloaded")

    # The job is found again by its input image, as a client that lost track of it would.
    input_image = job.inputs[0].image
    input_pk = input_image.rstrip("/").split("/")[-1]
    found = list(client.algorithm_jobs.by_input_image(input_pk))
    check([j.pk for j in found] == [job.pk], f"jobs by input image: {[j.pk for j in found]}")

    # --- a value input, from an existing socket value of the first job ------------------------
    second = client.start_algorithm_job(
        algorithm_slug="lung-volume-estimator",
        inputs=[SocketValueSpec(socket_slug="lesion-count", value=7)],
    )
    check(second.inputs[0].value == 7, "a value input is there at creation")
    second_job, _ = until_done(client, second.pk)
    second_outputs = {o.interface.slug: o.value for o in second_job.outputs}

    # --- inputs that match no interface are refused by gcapi before anything is uploaded ------
    try:
        client.start_algorithm_job(
            algorithm_slug="lung-volume-estimator",
            inputs=[SocketValueSpec(socket_slug="notes", value="x")],
        )
    except ValueError as e:
        check("No matching interface" in str(e), f"message: {e}")
    else:
        raise AssertionError("inputs matching no interface must raise ValueError")

    print(
        json.dumps(
            {
                "job": job.pk,
                "statuses": statuses,
                "lung_volume": volume,
                "summary": summary,
                "image_files": image_files,
                "image_output": outputs["generic-medical-image"].image,
                "second_job": second_job.pk,
                "second_outputs": second_outputs,
            }
        )
    )


if __name__ == "__main__":
    main()
