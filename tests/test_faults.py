"""Link faults: the fault-injecting proxy (``ziphalp.host.faults``) between the host and
the simulated board, and the driver's retries (``ziphalp.host.driver``, "Faults")
that make a run with damaged bytes end with exactly the model of a clean run."""

import socket
import threading

import numpy as np
import pytest
import serial
from ziphalp.host import cli
from ziphalp.host.faults import KINDS, FaultProxy
from ziphalp.host.train import train


@pytest.fixture
def echo_server():
    """socket://127.0.0.1:PORT of a server that echoes what it receives."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"socket://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _roundtrip(url: str, data: bytes, expect: int) -> bytes:
    with serial.serial_for_url(url, timeout=0.5) as port:
        port.write(data)
        got = b""
        while chunk := port.read(max(1, expect - len(got))):
            got += chunk
    return got


def test_clean_proxy_relays_bytes_unchanged(echo_server):
    data = bytes(range(256)) * 40
    with FaultProxy(echo_server, 0.0) as proxy:
        assert _roundtrip(proxy.url, data, len(data)) == data
        assert proxy.total == 0


def test_faults_at_their_rate(echo_server):
    """A 5% rate over 20 kB each way: about 1,000 faults a direction (within 5 sigma),
    each kind about a quarter; the bytes come back damaged."""
    data = bytes(range(256)) * 80
    with FaultProxy(echo_server, 0.05, seed=3, max_delay=0.0) as proxy:
        got = _roundtrip(proxy.url, data, len(data))
    assert got != data
    for direction in ("to board", "to host"):
        counts = [proxy.faults[direction, kind] for kind in KINDS]
        mean = 0.05 * len(data)            # the host side sees fewer bytes back; roughly
        assert abs(sum(counts) - mean) < 5 * np.sqrt(mean) + 0.1 * mean, counts
        assert min(counts) > sum(counts) / 4 * 0.7, counts


def test_proxy_refuses_other_urls():
    with pytest.raises(ValueError, match="socket://host:port"):
        FaultProxy("/dev/ttyUSB0", 0.1)


# On the simulated ULX3S (HALP) a request cut short costs the board's 20 ms time-out
# in simulated cycles, seconds of simulation each: its runs with faults are in
# sim/bench_faults.py, not here.
@pytest.mark.parametrize("kw", [
    dict(dataset="diabetes", epochs=4),
    dict(dataset="breast_cancer", epochs=2, loss="hinge", bits=2, batch=4),
], ids=["least-squares", "svm"])
def test_faults_leave_the_model_of_a_clean_run(kw):
    """1e-3 of the link's bytes damaged: the same model words and losses, with
    requests resent."""
    clean = train(progress=False, **kw)
    faulty = train(progress=False, faults=1e-3, fault_seed=7, **kw)
    np.testing.assert_array_equal(faulty.words, clean.words)
    assert [r.loss for r in faulty.history] == [r.loss for r in clean.history]
    assert sum(r.retries for r in faulty.history) > 0
    assert sum(r.retries for r in clean.history) == 0
    # every damaged byte is counted; no retry without a fault
    assert faulty.faults_injected >= sum(r.retries for r in faulty.history) > 0
    assert clean.faults_injected == 0


def test_faults_need_a_simulated_board(capsys):
    status = cli.main(["train", "diabetes", "--faults", "1e-3", "--board", "icebreaker",
                       "--port", "/dev/null", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "leave out the port" in err
