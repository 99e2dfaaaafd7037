"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "bitstream: builds a real bitstream with the open FPGA toolchain (slow; "
        "select with -m bitstream, skip with -m 'not bitstream')",
    )
