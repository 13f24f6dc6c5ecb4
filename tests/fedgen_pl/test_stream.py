"""The per-iteration stream: frames checked and bounded, only the run's secret admitted, over localhost."""

import time

import grpc
import pytest
import torch

from fedgen_pl.flower.stream import DeviceStream, EdgeStream, FrameError, decode, encode, new_secret

LIMIT = 64 * 1024


def test_a_frame_round_trips_every_tensor_bit_for_bit():
    tensors = {"fake_d": torch.randn(4, 1, 8, 8), "y_d": torch.arange(4), "empty": torch.zeros(0, 3)}
    kind, meta, back = decode(encode("work", tensors, iteration=7), LIMIT)
    assert kind == "work" and meta == {"iteration": 7}
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


@pytest.mark.parametrize("frame, message", [
    (b"XXXX" + encode("work")[4:], "no frame magic"),
    (encode("work", {"x": torch.ones(8)})[:-4], "announced"),
    (encode("work", {"x": torch.ones(8)}) + b"\0", "after the last tensor"),
    (encode("work")[:8] + b"{not json" + encode("work")[8:], "does not parse|after the last tensor"),
    (encode("work", {"x": torch.ones(LIMIT)}), "the limit is"),
])
def test_bad_frames_are_refused_with_the_reason(frame, message):
    with pytest.raises(FrameError, match=message):
        decode(frame, LIMIT)


def _wait(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    return condition()


def _next(edge, kinds=("feedback", "joined", "left")):
    while True:
        item = edge.receive(timeout=10)
        assert item is not None, "nothing arrived"
        if item[1] in kinds:
            return item


@pytest.fixture
def edge():
    edge = EdgeStream("127.0.0.1:0", new_secret(), num_devices=2, max_frame_bytes=LIMIT)
    yield edge
    edge.stop()


def _address(edge):
    return f"127.0.0.1:{edge.port}"


def test_work_down_and_feedback_up(edge):
    device = DeviceStream(_address(edge), 1, edge.secret, LIMIT)
    assert _next(edge)[:2] == (1, "joined")
    work = {"fake_g": torch.randn(4, 1, 8, 8)}
    assert edge.send(1, encode("work", work, iteration=3))
    kind, meta, got = device.receive()
    assert kind == "work" and meta["iteration"] == 3 and torch.equal(got["fake_g"], work["fake_g"])
    device.send(encode("feedback", {"feedback": got["fake_g"] * 2}, iteration=3))
    who, kind, meta, tensors = _next(edge)
    assert (who, kind) == (1, "feedback") and torch.equal(tensors["feedback"], work["fake_g"] * 2)
    device.close()
    assert _next(edge, ("left",))[:2] == (1, "left")


@pytest.mark.parametrize("secret", ["wrong", "stale"])
def test_a_connection_without_the_runs_secret_is_refused_counted_and_changes_nothing(edge, secret, caplog):
    previous_run = EdgeStream("127.0.0.1:0", new_secret(), 2, LIMIT)
    previous_run.stop()
    other = new_secret() if secret == "wrong" else previous_run.secret
    intruder = DeviceStream(_address(edge), 0, other, LIMIT)
    with pytest.raises(grpc.RpcError) as error:
        intruder.receive()
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert edge.counters.refused == 1 and edge.connected == set() and edge.receive(timeout=0.2) is None
    assert "refused a connection" in caplog.text
    device = DeviceStream(_address(edge), 0, edge.secret, LIMIT)      # the run's own device still joins
    assert _next(edge)[:2] == (0, "joined") and edge.counters.connections == 1
    device.close()


def test_malformed_and_oversized_frames_are_dropped_counted_and_the_stream_goes_on(edge):
    device = DeviceStream(_address(edge), 0, edge.secret, LIMIT)
    assert _next(edge)[:2] == (0, "joined")
    device.send(b"garbage")
    device.send(encode("feedback", {"x": torch.ones(LIMIT // 4 + 16)}))    # just over the limit
    device.send(encode("feedback", {"x": torch.ones(3)}))
    who, kind, _, tensors = _next(edge)
    assert (who, kind) == (0, "feedback") and torch.equal(tensors["x"], torch.ones(3))
    assert edge.counters.malformed == 1 and edge.counters.oversized == 1
    device.close()


def test_a_device_that_reconnects_replaces_its_stream_and_is_counted(edge):
    first = DeviceStream(_address(edge), 1, edge.secret, LIMIT)
    assert _next(edge)[:2] == (1, "joined")
    second = DeviceStream(_address(edge), 1, edge.secret, LIMIT)
    assert _wait(lambda: edge.counters.reconnections == 1)
    assert edge.send(1, encode("work", {"x": torch.ones(2)}))
    assert second.receive()[0] == "work"
    first.close()
    second.close()


def test_with_certificates_the_stream_is_tls_and_a_plaintext_device_cannot_join(tmp_path):
    from tests.tls_files import write_tls_files

    ca, certificate, key = write_tls_files(tmp_path)
    edge = EdgeStream("127.0.0.1:0", new_secret(), 1, LIMIT, tls=(key.read_bytes(), certificate.read_bytes()))
    try:
        device = DeviceStream(_address(edge), 0, edge.secret, LIMIT, root_certificate=ca.read_bytes())
        assert _next(edge)[:2] == (0, "joined")
        edge.send(0, encode("work", {"x": torch.ones(2)}))
        assert device.receive()[0] == "work"
        device.close()
        with pytest.raises(grpc.FutureTimeoutError):
            DeviceStream(_address(edge), 0, edge.secret, LIMIT, timeout_s=2)        # plaintext: no handshake
        assert edge.counters.connections == 1
    finally:
        edge.stop()
