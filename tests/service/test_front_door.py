"""The front door of `llmq serve`: a real server on SQLite, spoken to over raw sockets so that
a body can be declared and never sent, sent in chunks without end, or left to stall; what
is refused must be refused before the body is read."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.private_servers import free_port

from .http_stack import start_server, stop_server
from .workers import llmq, llmq_json

FILE_CAP = 1 << 20  # LLMQ_API_MAX_FILE_BYTES
LINE_CAP = 64 << 10  # LLMQ_MAX_LINE_BYTES: the cap of a JSON body
PER_KEY = 3 << 19  # LLMQ_API_MAX_UPLOADING_BYTES_PER_KEY: one and a half uploads
STALL = 2.0  # LLMQ_API_BODY_TIMEOUT
DEADLINE = 5.0  # LLMQ_API_BODY_DEADLINE


@dataclass
class Door:
    port: int
    key: str
    base_url: str


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    folder = tmp_path_factory.mktemp("front-door")
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{folder / 'llmq.db'}",
           "LLMQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing is enqueued
           "LLMQ_FILES_DIR": str(folder / "files"), "LLMQ_API_MAX_FILE_BYTES": str(FILE_CAP),
           "LLMQ_MAX_LINE_BYTES": str(LINE_CAP), "LLMQ_API_BODY_TIMEOUT": str(STALL),
           "LLMQ_API_BODY_DEADLINE": str(DEADLINE),
           "LLMQ_API_MAX_UPLOADING_BYTES_PER_KEY": str(PER_KEY),
           "LLMQ_API_METRICS_NEED_KEY": "true"}
    llmq(env, "db", "upgrade")
    key = llmq_json(env, "keys", "create", "--name", "door", "--json")["key"]
    port = free_port()
    server = start_server(env, port, folder / "serve.log")
    try:
        yield Door(port, key, f"http://127.0.0.1:{port}")
    finally:
        stop_server(server)


def open_request(door: Door, path: str, headers: dict[str, str]) -> socket.socket:
    """A POST whose headers are sent and whose body is up to the caller."""
    sock = socket.create_connection(("127.0.0.1", door.port), timeout=10)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{door.port}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    return sock


def answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, str]:
    """The status and body of the response, read while the request's body is unfinished."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def multipart_head(boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            "filename=\"big.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def send_until_answered(sock: socket.socket, first: bytes, piece: bytes, most: int) -> int:
    """Sends ``first`` then ``piece`` after ``piece`` as chunks until the server answers (or
    ``most`` bytes are sent); returns the bytes sent."""
    sock.sendall(chunk(first))
    sent = len(first)
    sock.setblocking(False)
    try:
        while sent < most:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if writable:
                try:
                    sock.send(chunk(piece))
                    sent += len(piece)
                except BlockingIOError:
                    pass
    finally:
        sock.setblocking(True)
    return sent


@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches", "/v1/chat/completions"])
def test_a_call_without_a_key_is_refused_before_its_body(door: Door, path: str) -> None:
    """1.5 GB declared, a first chunk sent: 401 comes while the rest has not been sent."""
    for auth in ({}, {"Authorization": f"Bearer {door.key}x"}):
        sock = open_request(door, path, {"Content-Length": str(1_500_000_000),
                                         "Content-Type": "application/json", **auth})
        with sock:
            sock.sendall(b"{" * 65536)
            started = time.monotonic()
            status, body = answer(sock)
        assert status == 401, body
        assert time.monotonic() - started < 5
        assert ("API key" in body) and ("invalid_api_key" in body) == bool(auth)


def test_a_declared_length_over_the_limit_is_refused_at_once(door: Door) -> None:
    for path, length, setting in (("/v1/files", 1_039_360_212, "LLMQ_API_MAX_FILE_BYTES"),
                                  ("/v1/batches", 400_000_000, "LLMQ_MAX_LINE_BYTES")):
        sock = open_request(door, path, {"Authorization": f"Bearer {door.key}",
                                         "Content-Length": str(length),
                                         "Content-Type": "application/json"})
        with sock:
            status, body = answer(sock)  # nothing of the body sent
        assert status == 413, body
        assert setting in body and "over the limit" in body


@pytest.mark.parametrize(("path", "cap"), [("/v1/files", FILE_CAP), ("/v1/batches", LINE_CAP)])
def test_a_chunked_body_is_cut_where_it_passes_the_limit(door: Door, path: str,
                                                         cap: int) -> None:
    boundary = "llmqboundary"
    kind = (f"multipart/form-data; boundary={boundary}" if path == "/v1/files"
            else "application/json")
    first = multipart_head(boundary) if path == "/v1/files" else b'{"input_file_id": "'
    sock = open_request(door, path, {"Authorization": f"Bearer {door.key}",
                                     "Transfer-Encoding": "chunked", "Content-Type": kind})
    with sock:
        sent = send_until_answered(sock, first, b"x" * 16384, most=200 * cap)
        status, body = answer(sock)
    assert status == 413, body
    assert sent < 200 * cap  # answered long before the client gave up
    listed = httpx.get(f"{door.base_url}/v1/files",
                       headers={"Authorization": f"Bearer {door.key}"}).json()
    assert listed["data"] == []  # nothing stored


def test_a_stalled_body_times_out(door: Door) -> None:
    sock = open_request(door, "/v1/batches", {"Authorization": f"Bearer {door.key}",
                                              "Content-Length": "1000",
                                              "Content-Type": "application/json"})
    with sock:
        sock.sendall(b'{"input_file_id"')
        started = time.monotonic()
        status, body = answer(sock, timeout=STALL + 10)
    assert status == 408, body
    assert STALL - 0.5 < time.monotonic() - started < STALL + 8
    assert "LLMQ_API_BODY_TIMEOUT" in body


def test_a_trickling_body_passes_its_deadline(door: Door) -> None:
    """A byte every second never stalls, and still gets 408 once the body's deadline is past."""
    sock = open_request(door, "/v1/batches", {"Authorization": f"Bearer {door.key}",
                                              "Content-Length": "1000",
                                              "Content-Type": "application/json"})
    with sock:
        started = time.monotonic()
        sock.setblocking(False)
        while not select.select([sock], [], [], 1.0)[0]:
            sock.send(b" ")
            assert time.monotonic() - started < DEADLINE + 10, "no answer"
        sock.setblocking(True)
        status, body = answer(sock)
    assert status == 408, body
    assert "LLMQ_API_BODY_DEADLINE" in body and time.monotonic() - started > DEADLINE - 0.5


def test_uploads_in_flight_are_bounded_per_key(door: Door) -> None:
    """One upload of 0.9 MiB held open, then another: the second passes the key's 1.5 MiB of
    uploads in progress and gets 429; once the first ends, an upload goes through."""
    boundary = "llmqboundary"
    headers = {"Authorization": f"Bearer {door.key}", "Transfer-Encoding": "chunked",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}
    held = open_request(door, "/v1/files", headers)
    with held:
        held.sendall(chunk(multipart_head(boundary)))
        for _ in range(9):
            held.sendall(chunk(b'{"prompt": "hold"}\n' * 5500))  # ~100 KB each
        time.sleep(0.5)  # the server has read them
        second = open_request(door, "/v1/files", headers)
        with second:
            sent = send_until_answered(second, multipart_head(boundary), b"y" * 16384,
                                       most=50 * FILE_CAP)
            status, body = answer(second)
        assert status == 429, body
        assert "LLMQ_API_MAX_UPLOADING_BYTES_PER_KEY" in body and sent < 50 * FILE_CAP
    time.sleep(0.5)  # the held upload's connection is gone: its bytes are released
    ok = httpx.post(f"{door.base_url}/v1/files", headers={"Authorization": f"Bearer {door.key}"},
                    files={"file": ("small.jsonl", b'{"prompt": "hi"}\n')},
                    data={"purpose": "batch"})
    assert ok.status_code == 200, ok.text


def test_what_the_door_answers_after_the_key(door: Door) -> None:
    """No CDN page, /metrics behind the key when asked to be, a clean upload name, strict
    request fields and a bounded completion window, each refused at submit."""
    auth = {"Authorization": f"Bearer {door.key}"}
    assert httpx.get(f"{door.base_url}/docs").status_code == 404
    assert httpx.get(f"{door.base_url}/openapi.json").status_code == 200
    assert httpx.get(f"{door.base_url}/metrics").status_code == 401
    assert httpx.get(f"{door.base_url}/metrics", headers=auth).status_code == 200
    uploaded = httpx.post(f"{door.base_url}/v1/files", headers=auth,
                          files={"file": ("evil\u202egpj.jsonl\u200b", b'{"prompt": "hi"}\n')},
                          data={"purpose": "batch"}).json()
    assert uploaded["filename"] == "evilgpj.jsonl"
    for window in ("24h\n", "999999d", "8d"):
        made = httpx.post(f"{door.base_url}/v1/batches", headers=auth,
                          json={"input_file_id": uploaded["id"], "completion_window": window,
                                "endpoint": "/v1/completions"})
        assert made.status_code == 400 and "completion_window" in made.text, made.text
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for extra, why in (({"max_tokens": True}, "max_tokens: Input should be a valid integer"),
                       ({"temperature": 1e999}, "temperature"),
                       ({"messages": [{"role": "user", "content": "\ud800"}]},
                        "messages.0.content: a lone UTF-16 surrogate")):
        body = json.dumps({**chat, **extra})  # "\ud800" stays an escape, as a client sends it
        sent = httpx.post(f"{door.base_url}/v1/chat/completions",
                          headers={**auth, "Content-Type": "application/json"}, content=body)
        assert sent.status_code == 400 and why in sent.text, sent.text
