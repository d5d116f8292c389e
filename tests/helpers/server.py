"""genre-serve as a user starts it: the console script as a process on a free loopback port, its
output going to a file, and plain HTTP requests to it (``urllib``, no client library)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL_LINE = re.compile(r"genre-serve: .* on (http://127\.0\.0\.1:\d+) ")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(ckpt: str | Path, cwd: Path, *overrides: str, env: dict | None = None, timeout: float = 180) -> Server:
    """``genre-serve ckpt_path=<ckpt> serve.port=0 ...`` started from ``cwd`` with stdout and stderr in
    ``cwd/serve-<n>.log``; returns once it prints the address it listens on."""
    import os

    log = cwd / f"serve-{uuid.uuid4().hex[:8]}.log"
    executable = Path(sys.executable).parent / "genre-serve"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(executable), f"ckpt_path={ckpt}", "serve.port=0", *overrides],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = URL_LINE.search(log.read_text(errors="replace"))
        if found:
            return Server(process, found.group(1), log)
        if process.poll() is not None:
            raise RuntimeError(f"genre-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"genre-serve did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, dict[str, Any] | str]:
    """(status, JSON body, or text for a page) of a GET (no data) or POST."""
    call = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            status, body, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body.decode()


def post_image(url: str, data: bytes, content_type: str = "image/jpeg", **headers: str) -> tuple[int, Any]:
    return request(url, data, {"Content-Type": content_type, **headers})


def multipart(data: bytes, filename: str, content_type: str, field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, as a browser's form sends it: (body, content type)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"
