"""Shared pytest configuration."""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "bitstream: builds a real bitstream with the open FPGA toolchain (slow; "
        "select with -m bitstream, skip with -m 'not bitstream')",
    )
    config.addinivalue_line(
        "markers",
        "prebuild: builds what many tests share (the simulated boards' C++); collected "
        "before everything else",
    )
    config.addinivalue_line(
        "markers",
        "slow: takes a minute or more (a netlist simulation, a long fuzz); collected first",
    )


def pytest_collection_modifyitems(config, items):
    """The shared builds, the bitstream builds, then the slow tests, then the rest,
    each group in its own order. ``make test`` hands the tests out one at a time
    (``-n auto --maxschedchunk 1``), so one worker compiles the simulated boards
    while the other builds bitstreams (no test then waits on a compile another
    worker holds), the long tests start early and the short ones fill in around
    them: the suite takes about its work divided by the workers, not one worker's
    tail of long tests."""
    def group(item: pytest.Item) -> int:
        for rank, marker in enumerate(("prebuild", "bitstream", "slow")):
            if item.get_closest_marker(marker):
                return rank
        return 3
    items.sort(key=group)
