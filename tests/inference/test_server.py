"""genre-serve for real: the console script as a process on a free loopback port, real HTTP requests.

Same numbers as genre-predict, every bad upload of the issue's list refused with a 4xx and a one-line
reason while the server keeps serving, the API key, 16 clients for 10 s without a lost response, and
SIGTERM finishing the requests in flight before the command exits 0.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers.cli import run_entry_point
from tests.helpers.fault_corpus import _png_declaring
from tests.helpers.server import Server, multipart, post_image, request, start_server

pytestmark = pytest.mark.slow
CLASSES = ["Action", "Comedy", "Horror", "Romance"]


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_ckpt_path"]


@pytest.fixture(scope="module")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    running = start_server(best_checkpoint(tiny_run), tmp_path_factory.mktemp("serve"))
    yield running
    assert running.stop() == 0, running.output()[-2000:]


@pytest.fixture(scope="module")
def posters(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight of the run's test posters, copied into a folder of their own."""
    folder = tmp_path_factory.mktemp("inbox")
    tested = pd.read_csv(tiny_run / "test_predictions.csv").head(8)
    return [Path(shutil.copy(path, folder / f"{i}_{Path(path).name}")) for i, path in enumerate(tested["file_path"])]


def test_health_names_the_checkpoint_and_the_page_is_served(server: Server, tiny_run: Path):
    status, health = request(f"{server.url}/health")
    ckpt = Path(best_checkpoint(tiny_run))
    assert status == 200 and health["status"] == "ok" and health["classes"] == CLASSES
    assert health["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
    assert health["api_key_required"] is False and health["batching"]["enabled"] is True
    # backend=auto on a CPU: the ONNX export, made and checked before the server listened.
    assert (health["backend"], health["precision"]) == ("onnxruntime", "32")
    status, page = request(f"{server.url}/")
    assert status == 200 and '<input id="file" type="file"' in page and "predict?explain=true" in page


def test_predictions_are_genre_predicts_numbers(server: Server, posters: list[Path], tiny_run: Path, tmp_path: Path):
    done = run_entry_point(
        "genre-predict", f"ckpt_path={best_checkpoint(tiny_run)}", f"input={posters[0].parent}",
        f"output_csv={tmp_path / 'predictions.csv'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = pd.read_csv(tmp_path / "predictions.csv").set_index("file_path")
    for i, path in enumerate(posters):
        data = path.read_bytes()
        if i % 2:  # as a browser form sends it
            body, content_type = multipart(data, path.name, "image/jpeg")
            status, answer = post_image(f"{server.url}/predict?top_k=2", body, content_type)
        else:  # raw bytes, as curl --data-binary sends them
            status, answer = post_image(f"{server.url}/predict?top_k=2", data)
        assert status == 200, answer
        row = expected.loc[str(path)]
        served = [answer["probabilities"][c] for c in CLASSES]
        np.testing.assert_allclose(served, [row[f"p_{c}"] for c in CLASSES], atol=1e-5)
        assert answer["genre"] == row["top1"] and answer["genres"] == [row["top1"]]
        assert [t["genre"] for t in answer["top_k"]] == sorted(CLASSES, key=lambda c: -row[f"p_{c}"])[:2]
        assert answer["checkpoint"]["checkpoint"] == str(Path(best_checkpoint(tiny_run)).resolve())


def test_explain_true_adds_the_top_genres_map_as_a_png(server: Server, posters: list[Path]):
    status, answer = post_image(f"{server.url}/predict?explain=true", posters[0].read_bytes())
    assert status == 200 and answer["explanation"]["genre"] == answer["genre"]
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["explanation"]["png_base64"])))
    assert overlay.format == "PNG" and min(overlay.size) == 256
    pixels = np.asarray(overlay.convert("RGB"), dtype=float)
    assert pixels.std() > 5  # a heatmap over a picture, not a blank image


def bad_uploads(good: bytes) -> list[tuple[str, bytes, str, int, str]]:
    """(what, body, content type, expected status, the start of the expected reason)."""
    truncated = good[: len(good) // 2]
    wide = io.BytesIO()
    Image.new("RGB", (20_000, 8), (200, 30, 30)).save(wide, format="PNG")
    png = io.BytesIO()
    Image.new("RGB", (64, 96), (10, 120, 200)).save(png, format="PNG")
    corrupt_png = bytearray(png.getvalue())
    start = corrupt_png.index(b"IDAT") + 8
    corrupt_png[start : start + 12] = b"\xff" * 12  # the compressed pixels, broken (CRC no longer matches)
    page = b"<!doctype html><html><body>Access denied</body></html>"
    html_as_jpg = multipart(page, "poster.jpg", "image/jpeg")
    return [
        ("empty body", b"", "image/jpeg", 422, "empty file"),
        ("HTML named .jpg (multipart)", *html_as_jpg, 422, "not an image"),
        ("truncated JPEG", truncated, "image/jpeg", 422, "corrupt image data"),
        ("decompression bomb (PNG declaring 100000x100000)", _png_declaring(100_000, 100_000), "image/png", 422,
         "decompression bomb"),
        ("20,000 px wide PNG", wide.getvalue(), "image/png", 422, "image too large"),
        ("non-image content type (text/html)", page, "text/html", 415, "unsupported content type text/html"),
        ("corrupt PNG", bytes(corrupt_png), "image/png", 422, "corrupt image data"),
        ("multipart without a 'file' field", *multipart(good, "a.jpg", "image/jpeg", field="poster"), 400,
         "the multipart form has no 'file' field"),
        ("multipart 'file' of type text/plain", *multipart(good, "a.txt", "text/plain"), 415,
         "unsupported content type text/plain"),
    ]  # fmt: skip


def test_every_bad_upload_gets_a_4xx_with_a_one_line_reason_and_the_server_keeps_serving(
    server: Server, posters: list[Path]
):
    good = posters[0].read_bytes()
    table = []
    for what, body, content_type, status, reason in bad_uploads(good):
        got, answer = post_image(f"{server.url}/predict", body, content_type)
        table.append(f"| {what} | {got} | {answer.get('error')} |")
        assert got == status, (what, answer)
        assert set(answer) == {"error"} and answer["error"].startswith(reason), (what, answer)
        assert "\n" not in answer["error"]
        assert post_image(f"{server.url}/predict", good)[0] == 200, f"not serving after {what}"
    print("\n".join(["| upload | status | error |", "|---|---|---|", *table]))


def test_a_body_over_the_limit_is_refused_before_it_is_sent(server: Server, posters: list[Path]):
    """A declared 100 MB body: the 413 comes back while the client has sent only its first bytes."""
    host, port = urlparse(server.url).hostname, urlparse(server.url).port
    with socket.create_connection((host, port), timeout=30) as conn:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {100 * 2**20}\r\n\r\n"
        )
        conn.sendall(head.encode() + posters[0].read_bytes()[:1000])
        answer = b""
        while b'"}' not in answer and (chunk := conn.recv(4096)):  # the head and the JSON may come apart
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "upload too large: over serve.max_upload_mb (20 MB)" in answer
    # Chunked (urllib sends an iterable without a length so): refused once the bytes received pass the limit.
    status, answer = post_image(f"{server.url}/predict", iter([b"\xff" * 2**20] * 21), "image/jpeg")
    assert status == 413 and answer["error"].startswith("upload too large")
    assert request(f"{server.url}/health")[0] == 200


def test_sixteen_clients_for_ten_seconds_get_every_answer_in_bounded_memory(server: Server, posters: list[Path]):
    bodies = [p.read_bytes() for p in posters]
    expected = {i: post_image(f"{server.url}/predict", body)[1]["probabilities"] for i, body in enumerate(bodies)}
    rss_before = _rss_mib(server)
    stop_at = time.monotonic() + 10
    sent, answered, wrong = [0] * 16, [0] * 16, []

    def client(number: int) -> None:
        while time.monotonic() < stop_at:
            index = (number + sent[number]) % len(bodies)
            sent[number] += 1
            status, answer = post_image(f"{server.url}/predict", bodies[index])
            if status != 200:
                wrong.append((status, answer))
                continue
            np.testing.assert_allclose(
                [answer["probabilities"][c] for c in CLASSES], [expected[index][c] for c in CLASSES], atol=1e-5
            )
            answered[number] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    assert wrong == [] and sum(answered) == sum(sent) and sum(sent) >= 16, (sent, answered, wrong[:3])
    status, health = request(f"{server.url}/health")
    assert health["pending"] == 0 and health["batching"]["mean_recent_batch"] > 1  # batches formed
    growth = _rss_mib(server) - rss_before
    print(f"\n16 clients, 10 s: {sum(answered)} answers, none lost; RSS grew {growth:.0f} MiB")
    assert growth < 500


def test_an_api_key_is_required_when_set(tiny_run: Path, posters: list[Path], tmp_path: Path):
    keyed = start_server(best_checkpoint(tiny_run), tmp_path, env={"GENRE_SERVE_API_KEY": "s3cret"})
    try:
        good = posters[0].read_bytes()
        url = f"{keyed.url}/predict"
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            status, answer = post_image(url, good, **headers)
            assert status == 401 and answer["error"].startswith("missing or wrong API key"), headers
        assert post_image(url, good, **{"X-API-Key": "s3cret"})[0] == 200
        assert post_image(url, good, Authorization="Bearer s3cret")[0] == 200
        assert request(f"{keyed.url}/health")[1]["api_key_required"] is True
    finally:
        assert keyed.stop() == 0
    assert "s3cret" not in "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(tiny_run: Path, posters: list[Path], tmp_path: Path):
    # A 5 s batch wait holds the requests in the server when the signal comes.
    slow = start_server(best_checkpoint(tiny_run), tmp_path, "serve.batch_wait_ms=5000", "serve.max_batch_size=64")
    answers: list[int] = []

    def send(path: Path) -> None:
        answers.append(post_image(f"{slow.url}/predict", path.read_bytes())[0])

    threads = [threading.Thread(target=send, args=(path,)) for path in posters]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while request(f"{slow.url}/health")[1]["pending"] < len(posters) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert request(f"{slow.url}/health")[1]["pending"] == len(posters)
    code = slow.stop()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [200] * len(posters), slow.output()[-2000:]
    assert code == 0 and f"stopped after {len(posters)} predictions" in slow.output()
    with pytest.raises(OSError):
        socket.create_connection((urlparse(slow.url).hostname, urlparse(slow.url).port), timeout=5)


def _rss_mib(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("serve.max_upload_mb=-1", "error: serve.max_upload_mb=-1 is not valid: expected a positive number"),
        ("+serve.batch_size=8", "error: serve.batch_size=8 is not valid: expected one of"),
        ("ckpt_path=/no/such.ckpt", "error: ckpt_path='/no/such.ckpt' is not valid"),
    ],
)
def test_a_bad_setting_is_a_one_line_error_before_anything_is_served(
    tiny_run: Path, tmp_path: Path, override: str, expected: str
):
    done = run_entry_point("genre-serve", f"ckpt_path={best_checkpoint(tiny_run)}", override, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr[-2000:]
