"""The real HTTP service on a loopback port: good requests, bad requests, a concurrent burst, and a stop with a
request in flight."""
import http.client
import io
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import BIN, free_port, wait_for_http
from dicom_files import make_dicom

MAX_BYTES = 2_000_000
BODY_TIMEOUT = 5
PLACES = 18  # MAX_CONCURRENT_REQUESTS + MAX_QUEUED_REQUESTS


@pytest.fixture(scope="module")
def service(tiny_onnx):
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "lungseg"), "serve", "--model", str(tiny_onnx), "--port", str(port), "--threads", "1",
         "--max-bytes", str(MAX_BYTES), "--body-timeout", str(BODY_TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process)
    yield url
    process.terminate()
    process.wait(timeout=20)


def post(url: str, body: bytes, query: str = "", content_type: str = "application/octet-stream"
         ) -> tuple[int, dict, bytes]:
    """POST the body; a server that answers early (413) and closes while the body is still being sent is read
    like curl reads it: the answer counts, the broken pipe does not."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", f"/segment{query}")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        try:
            connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_reports_the_model(service):
    health = json.loads(urllib.request.urlopen(f"{service}/health").read())
    assert health["status"] == "ok" and health["provider"] == "CPUExecutionProvider"
    assert "git_commit" in health["model"]["code_version"]


def test_png_in_mask_out_with_the_input_size(service, real_xray):
    image = np.asarray(Image.fromarray(real_xray[0]).resize((333, 401)))
    status, headers, body = post(service, png_bytes(image))
    assert status == 200 and headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(body)))
    assert mask.shape == (401, 333) and set(np.unique(mask)) <= {0, 255}
    assert "x-lungseg-lung-fraction" in headers


def test_dicom_and_json_answer(service, real_xray, tmp_path):
    path = make_dicom(tmp_path / "x.dcm", real_xray[0].astype(np.uint16) * 16, 12, window=(2047.5, 4096))
    status, _, body = post(service, path.read_bytes(), "?format=json")
    assert status == 200
    fields = json.loads(body)
    assert (fields["width"], fields["height"]) == (512, 512)
    assert {"lung_fraction", "regions", "mean_confidence", "qa_flags", "needs_review"} <= set(fields)


@pytest.mark.parametrize("body, code, message", [
    (b"", 400, "empty body"),
    (b"hello, not an image", 415, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 415, "request body"),
])
def test_bad_requests_get_a_clear_4xx(service, body, code, message):
    status, _, answer = post(service, body)
    assert status == code
    assert message in json.loads(answer)["detail"]


def test_an_unknown_format_is_one_sentence(service, real_xray):
    status, _, answer = post(service, png_bytes(real_xray[0]), "?format=bogus")
    assert status == 422
    detail = json.loads(answer)["detail"]
    assert isinstance(detail, str) and detail.startswith("format: ") and "'review'" in detail, detail


def test_too_large_and_decompression_bomb(service):
    status, _, answer = post(service, b"\x00" * (MAX_BYTES + 1))
    assert status == 413 and "over the limit" in json.loads(answer)["detail"]
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # a few KB that decode to 144 megapixels
    assert len(bomb.getvalue()) < MAX_BYTES
    status, _, answer = post(service, bomb.getvalue())
    assert status == 413 and "over the limit" in json.loads(answer)["detail"]


def test_a_burst_of_concurrent_requests_all_succeed_and_the_service_stays_up(service, real_xray):
    body = png_bytes(real_xray[0])
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: post(service, body), range(24)))
    assert [status for status, _, _ in results] == [200] * 24
    masks = {answer for _, _, answer in results}
    assert len(masks) == 1  # the same image always gives the same mask
    assert urllib.request.urlopen(f"{service}/health").status == 200


def test_openapi_describes_the_body_the_answers_and_the_errors(service):
    schema = json.loads(urllib.request.urlopen(f"{service}/openapi.json").read())
    segment = schema["paths"]["/segment"]["post"]
    assert {"application/dicom", "image/png", "image/jpeg"} <= set(segment["requestBody"]["content"])
    assert {"image/png", "application/dicom", "application/json"} <= set(segment["responses"]["200"]["content"])
    assert {"400", "413", "415", "503"} <= set(segment["responses"])


def test_a_multipart_upload_is_told_how_to_send_the_file(service, real_xray):
    status, _, answer = post(service, png_bytes(real_xray[0]), content_type="multipart/form-data; boundary=x")
    assert status == 415 and "--data-binary" in json.loads(answer)["detail"]


def test_seg_of_a_png_is_a_clear_400_and_of_a_dicom_a_dicom(service, real_xray, tmp_path):
    status, _, answer = post(service, png_bytes(real_xray[0]), "?format=seg")
    assert status == 400 and "needs a DICOM input" in json.loads(answer)["detail"]
    path = make_dicom(tmp_path / "x.dcm", real_xray[0].astype(np.uint16) * 16, 12, window=(2047.5, 4096),
                      PatientName="T", PatientID="1", StudyDate="20260101", StudyTime="1200", StudyID="1",
                      AccessionNumber="")
    status, headers, body = post(service, path.read_bytes(), "?format=seg")
    assert status == 200 and headers["content-type"] == "application/dicom" and body[128:132] == b"DICM"


def test_a_dicom_whose_header_cannot_make_a_seg_is_still_segmented(service, real_xray, tmp_path):
    path = make_dicom(tmp_path / "no_uids.dcm", real_xray[0].astype(np.uint16) * 16, 12, window=(2047.5, 4096))
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID, ds.SeriesInstanceUID
    ds.save_as(path)
    status, _, answer = post(service, path.read_bytes(), "?format=review")  # what the review page asks for
    review = json.loads(answer)
    assert status == 200 and review["mask"] and review["seg"] is None
    assert review["seg_error"].startswith("cannot make a DICOM SEG from the file's header")
    status, _, answer = post(service, path.read_bytes(), "?format=seg")
    assert status == 422 and "cannot make a DICOM SEG" in json.loads(answer)["detail"]


def test_clients_that_stop_sending_get_408_and_free_their_places(service, real_xray):
    host, port = service.removeprefix("http://").split(":")
    stalled = []
    for _ in range(PLACES):
        client = socket.create_connection((host, int(port)), timeout=30)
        client.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\x89P")
        stalled.append(client)
    try:
        deadline = time.monotonic() + BODY_TIMEOUT - 1
        while json.load(urllib.request.urlopen(f"{service}/health"))["busy"] < PLACES:
            assert time.monotonic() < deadline, "the stalled uploads were not all admitted"
            time.sleep(0.05)
        assert post(service, png_bytes(real_xray[0]))[0] == 503  # every place is held
        answers = [client.recv(100).split(b"\r\n")[0] for client in stalled]
        assert answers == [b"HTTP/1.1 408 Request Timeout"] * PLACES
    finally:
        for client in stalled:
            client.close()
    assert post(service, png_bytes(real_xray[0]))[0] == 200


def test_only_a_limit_makes_a_413_whatever_the_file_says(service, real_xray, tmp_path):
    path = make_dicom(tmp_path / "odd.dcm", real_xray[0].astype(np.uint16), 12, photometric="OVER THE LIMIT")
    status, _, answer = post(service, path.read_bytes())
    assert status == 415 and "photometric interpretation 'OVER THE LIMIT'" in json.loads(answer)["detail"]


def test_health_answers_a_head_request(service):
    assert urllib.request.urlopen(urllib.request.Request(f"{service}/health", method="HEAD")).status == 200


def test_health_answers_while_large_images_are_being_decoded(service, real_xray):
    big = png_bytes(np.asarray(Image.fromarray(real_xray[0]).resize((4000, 4000))))
    with ThreadPoolExecutor(max_workers=3) as pool:
        pending = [pool.submit(post, service, big) for _ in range(2)]
        time.sleep(0.3)
        start = time.perf_counter()
        assert urllib.request.urlopen(f"{service}/health", timeout=10).status == 200
        health_seconds = time.perf_counter() - start
        assert [f.result()[0] for f in pending] == [200, 200]
    assert health_seconds < 0.5, health_seconds  # decoding runs in worker threads, never on the event loop


@pytest.mark.parametrize("sig, exit_code", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_refuses_new_connections_and_lets_a_request_in_flight_finish(tiny_onnx, real_xray, sig,
                                                                                  exit_code):
    port = free_port()
    process = subprocess.Popen([str(BIN / "lungseg"), "serve", "--model", str(tiny_onnx), "--port", str(port),
                                "--threads", "1", "--body-timeout", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    body = png_bytes(real_xray[0])
    in_flight = None
    try:
        wait_for_http(f"{url}/health", process)
        expected = post(url, body)
        assert expected[0] == 200 and expected[2].startswith(b"\x89PNG"), expected[:2]
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
        in_flight.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                          + body[: len(body) // 2])
        deadline = time.monotonic() + 10
        while json.load(urllib.request.urlopen(f"{url}/health", timeout=2))["busy"] < 1:
            assert time.monotonic() < deadline, "the half-sent request was not admitted"
            time.sleep(0.05)
        process.send_signal(sig)
        deadline = time.monotonic() + 10
        while True:  # the listening socket closes at once ...
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, f"still accepting connections 10 s after {sig.name}"
            time.sleep(0.05)
        time.sleep(1)  # a service without a grace period exits about 0.1 s after it stops accepting
        assert process.poll() is None, "the service exited with a request in flight"
        in_flight.sendall(body[len(body) // 2:])  # ... while the request in flight is still answered
        answer = b""
        while chunk := in_flight.recv(65536):
            answer += chunk
        head, _, mask = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-type: image/png" in head.lower(), head
        assert mask == expected[2]
        assert process.wait(timeout=10) == exit_code  # then exits: SIGTERM as a signal does (143 in a shell)
    except AssertionError as failure:
        process.kill()
        raise AssertionError(f"{failure}\nservice log:\n{process.communicate(timeout=20)[0]}") from failure
    finally:
        if in_flight is not None:
            in_flight.close()
        process.kill()
        process.wait(timeout=20)
