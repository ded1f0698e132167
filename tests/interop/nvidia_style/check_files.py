# An operator written the way NVIDIA's published Clara operators are (for example the test
# operator of NVIDIA's Clara DICOM adapter): the binding's names, an execute that returns
# nothing on success and raises on failure, and the folders taken from
# NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS with value.split(":")[1].
# It is deliberately left in that style (untyped, no result check): it must run unchanged.

import logging
import os
import shutil

import clara
from clara import Driver, Error, Payload

logger = logging.getLogger(__name__)


def execute(driver, payload):
    input_dir = os.environ.get("NVIDIA_CLARA_INPUTPATHS", "/input").split(":")[1]
    output_dir = os.environ.get("NVIDIA_CLARA_OUTPUTPATHS", "/output").split(":")[1]
    logger.info("Checking the files in {}".format(input_dir))

    rejected = []
    for name in sorted(os.listdir(input_dir)):
        if name.endswith(".bad"):
            rejected.append(name)
        shutil.copy2(os.path.join(input_dir, name), os.path.join(output_dir, name))

    logger.info("Copied {} file(s) to {}".format(len(os.listdir(output_dir)), output_dir))
    if rejected:
        raise Exception("{} unreadable file(s): {}".format(len(rejected), ", ".join(rejected)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logger.info("Program check-files started (clara {}).".format(clara.__version__))
    try:
        driver = Driver(execute_handler=execute)
        driver.start()
        driver.wait_for_completion()
    except Error as ex:
        logger.error("The driver failed: {}".format(ex))
        raise
    logger.info("Program check-files exited.")
