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
        "slow: takes a minute or more (a netlist simulation, a long fuzz); collected first",
    )


def pytest_collection_modifyitems(config, items):
    """The bitstream builds, then the slow tests, then the rest, each group in its
    own order. ``make test`` hands the tests out two at a time (``-n auto
    --maxschedchunk 1``), so the workers start the long tests first and share the
    short ones out around them: the suite then takes about its work divided by the
    workers, not one worker's tail of long tests."""
    def group(item: pytest.Item) -> int:
        if item.get_closest_marker("bitstream"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2
    items.sort(key=group)
