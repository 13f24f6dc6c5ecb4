"""The per-iteration stream between the edge and its devices (issue: Flower runs the federation, a stream
carries each iteration). Flower distributes the app, registers and authenticates the nodes and carries the
run's secret; this stream carries the work (fakes down) and the feedback (up) of every local iteration.

Transport: one bidirectional gRPC stream per device (grpcio, which flwr already installs: HTTP/2 framing,
TLS with the same certificates as Flower's channel, message size limits, keepalive), raw bytes without
generated code. On localhost a 200 KB exchange each way measured 0.2-0.8 ms (benchmarks/RESULTS.md).

Safety, as for Flower's own channel:
- **A run secret.** The edge draws 32 random bytes per run and sends them only inside Flower's messages.
  A device proves it holds the secret by answering the edge's fresh nonce with HMAC-SHA256(secret,
  nonce || device); a connection without it, or with another run's (stale) secret, is refused, logged and
  counted, and changes nothing in the run.
- **Bounded, checked frames.** A frame is ``magic | header length | JSON header | tensor bytes``; the header
  names every tensor's dtype and shape, and the bytes must add up. Frames larger than the limit, or that do
  not parse, are dropped and counted.
- **Only the given address.** The edge listens on the address the user gives, nothing else; with
  certificates (Flower's TLS on) the stream is TLS too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

log = logging.getLogger("fedgen")

METHOD = "/fedgen.Stream/Exchange"
MAGIC = b"FGS1"
DTYPES = {"float32": torch.float32, "int64": torch.int64, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "bool": torch.bool}
NONCE_BYTES = 32


class FrameError(ValueError):
    """A frame that is too large or does not parse."""


# -- frames -------------------------------------------------------------------------------------------
def encode(kind: str, tensors: dict[str, torch.Tensor] | None = None, **meta) -> bytes:
    """``magic | uint32 header length | JSON header | raw tensor bytes`` (little-endian, C order)."""
    tensors = tensors or {}
    specs, blobs = [], []
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        dtype = next((n for n, d in DTYPES.items() if d == tensor.dtype), None)
        if dtype is None:
            raise FrameError(f"tensor {name}: dtype {tensor.dtype} is not sent on the stream")
        specs.append([name, dtype, list(tensor.shape)])
        blobs.append(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    header = json.dumps({"kind": kind, "meta": meta, "tensors": specs}).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])


def decode(frame: bytes, limit: int) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """The frame's kind, meta and tensors; ``FrameError`` if it exceeds ``limit`` bytes or does not parse."""
    if len(frame) > limit:
        raise FrameError(f"frame of {len(frame)} bytes, the limit is {limit}")
    if len(frame) < 8 or frame[:4] != MAGIC:
        raise FrameError("no frame magic")
    (size,) = struct.unpack("<I", frame[4:8])
    if 8 + size > len(frame):
        raise FrameError("header longer than the frame")
    try:
        header = json.loads(frame[8:8 + size])
        kind, meta, specs = str(header["kind"]), dict(header["meta"]), list(header["tensors"])
    except (ValueError, KeyError, TypeError) as err:
        raise FrameError(f"header does not parse: {err}") from None
    tensors, offset = {}, 8 + size
    for spec in specs:
        try:
            name, dtype, shape = str(spec[0]), DTYPES[spec[1]], [int(d) for d in spec[2]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise FrameError(f"bad tensor spec {spec!r}") from None
        if any(d < 0 for d in shape):
            raise FrameError(f"tensor {name}: negative dimension")
        count = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        if offset + count > len(frame):
            raise FrameError(f"tensor {name}: {count} bytes announced, {len(frame) - offset} left")
        raw = torch.frombuffer(bytearray(frame[offset:offset + count]), dtype=torch.uint8) if count else \
            torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
        offset += count
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} bytes after the last tensor")
    return kind, meta, tensors


def proof(secret: bytes, nonce: bytes, device: int) -> bytes:
    """What a device answers to the edge's nonce: HMAC-SHA256(secret, nonce || device)."""
    return hmac.new(secret, nonce + str(int(device)).encode(), hashlib.sha256).digest()


def new_secret() -> bytes:
    return secrets.token_bytes(32)


# -- the edge's side ----------------------------------------------------------------------------------
@dataclass
class StreamCounters:
    refused: int = 0          # connections without the run's secret (or with a stale one)
    malformed: int = 0        # frames that did not parse, dropped
    oversized: int = 0        # frames over the limit, dropped
    connections: int = 0      # accepted connections
    reconnections: int = 0    # accepted connections of a device that had one before (a restarted device)
    seen: set = field(default_factory=set)


class EdgeStream:
    """The edge's end: a gRPC server on ``address`` that accepts one stream per device holding the run's
    secret. ``send(device, frame)`` queues a frame for a connected device; ``receive(timeout)`` returns the
    next ``(device, kind, meta, tensors)`` from any device, or None."""

    def __init__(self, address: str, secret: bytes, num_devices: int, max_frame_bytes: int,
                 tls: tuple[bytes, bytes] | None = None, workers: int | None = None):
        self.secret, self.num_devices, self.limit = secret, num_devices, int(max_frame_bytes)
        self.counters = StreamCounters()
        self.inbox: queue.Queue = queue.Queue()
        self.outboxes: dict[int, queue.Queue] = {}
        self.lock = threading.Lock()
        # frames over the limit are read, dropped and counted; over twice the limit gRPC ends the stream
        options = [("grpc.max_receive_message_length", 2 * self.limit), ("grpc.max_send_message_length", self.limit)]
        self.server = grpc.server(ThreadPoolExecutor(max_workers=workers or num_devices + 4), options=options,
                                  handlers=[grpc.method_handlers_generic_handler("fedgen.Stream", {
                                      "Exchange": grpc.stream_stream_rpc_method_handler(self._exchange)})])
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            key, certificate = tls
            self.port = self.server.add_secure_port(address, grpc.ssl_server_credentials([(key, certificate)]))
        if self.port == 0:
            raise OSError(f"the stream cannot listen on {address}")
        self.address = address
        self.server.start()

    def stop(self) -> None:
        for box in list(self.outboxes.values()):
            box.put(None)
        self.server.stop(grace=None)

    @property
    def connected(self) -> set[int]:
        with self.lock:
            return set(self.outboxes)

    def send(self, device: int, frame: bytes) -> bool:
        box = self.outboxes.get(device)
        if box is None:
            return False
        box.put(frame)
        return True

    def receive(self, timeout: float | None = None):
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _refuse(self, context, peer: str, why: str):
        self.counters.refused += 1
        log.warning("stream: refused a connection from %s (%s)", peer, why)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not this run's device")

    def _exchange(self, frames, context):
        """One device's stream: the nonce, its proof, then work down and feedback up until it ends."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        yield encode("nonce", nonce=nonce.hex())
        peer = context.peer()
        try:
            first = next(frames)
        except StopIteration:
            return
        try:
            kind, meta, _ = decode(first, self.limit)
            device = int(meta["device"])
            answer = bytes.fromhex(str(meta["proof"]))
        except (FrameError, KeyError, ValueError, TypeError):
            self._refuse(context, peer, "no valid hello")
            return
        if kind != "hello" or not 0 <= device < self.num_devices or \
                not hmac.compare_digest(answer, proof(self.secret, nonce, device)):
            self._refuse(context, peer, f"wrong or stale secret for device {device}")
            return
        box: queue.Queue = queue.Queue()
        with self.lock:
            old = self.outboxes.get(device)
            self.outboxes[device] = box
            self.counters.connections += 1
            if device in self.counters.seen:
                self.counters.reconnections += 1
            self.counters.seen.add(device)
        if old is not None:
            old.put(None)                        # a device that reconnects replaces its old stream
        self.inbox.put((device, "joined", {}, {}))
        reader = threading.Thread(target=self._read, args=(device, frames, box), daemon=True)
        reader.start()
        while True:
            frame = box.get()
            if frame is None:
                break
            yield frame
        with self.lock:
            if self.outboxes.get(device) is box:
                del self.outboxes[device]

    def _read(self, device: int, frames, box: queue.Queue) -> None:
        try:
            for frame in frames:
                try:
                    kind, meta, tensors = decode(frame, self.limit)
                except FrameError as err:
                    if len(frame) > self.limit:
                        self.counters.oversized += 1
                    else:
                        self.counters.malformed += 1
                    log.warning("stream: dropped a frame from device %d (%s)", device, err)
                    continue
                self.inbox.put((device, kind, {**meta, "_bytes": len(frame)}, tensors))
        except grpc.RpcError:
            pass
        finally:
            if self.outboxes.get(device) is box:
                self.inbox.put((device, "left", {}, {}))
                box.put(None)


# -- the device's side --------------------------------------------------------------------------------
class DeviceStream:
    """A device's end: connects to the edge, answers its nonce with the run's secret, then ``receive``
    yields frames from the edge and ``send`` sends frames up."""

    def __init__(self, address: str, device: int, secret: bytes, max_frame_bytes: int,
                 root_certificate: bytes | None = None, timeout_s: float = 30.0):
        self.device, self.limit = int(device), int(max_frame_bytes)
        options = [("grpc.max_receive_message_length", self.limit), ("grpc.max_send_message_length", 2 * self.limit)]
        self.channel = grpc.insecure_channel(address, options=options) if root_certificate is None else \
            grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificate), options=options)
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        self.outbox: queue.Queue = queue.Queue()
        self.replies = self.channel.stream_stream(METHOD)(self._frames())
        kind, meta, _ = decode(next(self.replies), self.limit)
        if kind != "nonce":
            raise ConnectionError("the edge did not start with a nonce")
        self.send(encode("hello", device=self.device,
                         proof=proof(secret, bytes.fromhex(meta["nonce"]), self.device).hex()))

    def _frames(self):
        while True:
            frame = self.outbox.get()
            if frame is None:
                return
            yield frame

    def send(self, frame: bytes) -> None:
        self.outbox.put(frame)

    def receive(self):
        """The next ``(kind, meta, tensors)`` from the edge (blocks); None when the edge closed the stream."""
        try:
            return decode(next(self.replies), self.limit)
        except StopIteration:
            return None

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()
