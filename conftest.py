"""pytest settings for the whole repository (the notebooks under chapters/ and tests/).

nbval reads a cell's outputs from the kernel's IOPub channel after the cell has
replied, giving up when no message arrives for ``output_timeout`` seconds (5, fixed in
nbval 0.11). On a busy two-core machine the IOPub thread of a kernel that has just
finished a long training cell (with many progress-bar messages queued) can lag behind
its reply for longer than that, and nbval then fails the cell with "Timeout of 5
seconds exceeded waiting for output" although the cell ran. A longer wait changes
nothing when the outputs arrive in time, and a dead kernel is still caught by
``--nbval-cell-timeout``.
"""

NBVAL_OUTPUT_TIMEOUT = 120  # seconds


def pytest_collection_modifyitems(items):
    for item in items:
        if type(item).__name__ == "IPyNbCell" and hasattr(item, "output_timeout"):
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT
