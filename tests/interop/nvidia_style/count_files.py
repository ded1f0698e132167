# The downstream operator, in the same style, with every handler keyword of the binding. Its
# notification handler reads job_name and stage_timeout on the very first notification.

import json
import os

from clara import Driver, Payload

first_notification = {}


def notify(driver, notification):
    if not first_notification:
        first_notification.update(
            kind=notification.kind.value,
            job_name=driver.job_name,
            stage_timeout=driver.stage_timeout.total_seconds(),
        )


def prepare(driver):
    print("prepare: job {}".format(driver.job_name), flush=True)


def execute(driver, payload):
    input_dir = os.environ.get("NVIDIA_CLARA_INPUTPATHS", "/input").split(":")[1]
    output_dir = os.environ.get("NVIDIA_CLARA_OUTPUTPATHS", "/output").split(":")[1]
    entry = payload.input_entries[0]
    seen = {
        "first_notification": first_notification,
        "files": sorted(os.listdir(input_dir)),
        "input_entry": [entry.name, entry.path, entry.declared_path],
        "output_declared_path": payload.output_entries[0].declared_path,
        "same_folder_as_payload": entry.path == input_dir,
    }
    with open(os.path.join(output_dir, "seen.json"), "w") as f:
        json.dump(seen, f)


def cleanup(driver):
    print("cleanup", flush=True)


if __name__ == "__main__":
    driver = Driver(
        prepare_handler=prepare,
        execute_handler=execute,
        cleanup_handler=cleanup,
        notification_handler=notify,
    )
    driver.start()
    driver.wait_for_completion()
