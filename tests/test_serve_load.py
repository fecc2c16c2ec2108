"""A bounded load on loopback: 200 requests, 16 at a time, good, bad and oversized inputs mixed. No 5xx but the
documented 503 when the queue is full, every good request answered correctly, resident memory bounded.

The suite runs it on a tiny model; to measure the deployed one, point it at that file:
    LUNGSEG_LOAD_TEST_MODEL=models/model.onnx .venv/bin/python -m pytest tests/test_serve_load.py -s
"""
import io
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import BIN, free_port, wait_for_http
from test_serve import png_bytes, post

REQUESTS, AT_ONCE = 200, 16
MEMORY_BOUND_MB = 1500


def resident_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):  # peak resident set size
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.e2e
def test_mixed_load_is_answered_within_bounded_memory(tiny_onnx, real_xray, tmp_path):
    model = os.environ.get("LUNGSEG_LOAD_TEST_MODEL", str(tiny_onnx))
    port = free_port()
    process = subprocess.Popen([str(BIN / "lungseg"), "serve", "--model", model, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process)
        good = png_bytes(real_xray[0])
        large = png_bytes(np.asarray(Image.fromarray(real_xray[0]).resize((3000, 3000))))
        bomb = io.BytesIO()
        Image.new("1", (9000, 9000)).save(bomb, format="PNG")
        bodies = {"good": good, "large": large, "bad": b"not an image at all", "bomb": bomb.getvalue(),
                  "truncated": good[: len(good) // 2]}
        kinds = [list(bodies)[i % len(bodies)] for i in range(REQUESTS)]
        with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
            answers = list(pool.map(lambda kind: (kind, post(url, bodies[kind])), kinds))
        expected_mask = post(url, good)[2]
        for kind, (status, headers, body) in answers:
            assert status < 500 or status == 503, (kind, status, body[:200])
            if status == 503:
                assert headers.get("retry-after") == "1"
            elif kind in ("good", "large"):
                assert status == 200 and headers["content-type"] == "image/png", (kind, status)
                if kind == "good":
                    assert body == expected_mask
            else:
                assert status in (413, 415), (kind, status)
        answered = sum(status == 200 for _, (status, _, _) in answers)
        assert answered >= REQUESTS * 2 // 5 * 0.9  # the good and large ones, bar a few told to retry
        peak = resident_mb(process.pid)
        print(f"\n{model}: peak resident memory {peak:.0f} MB over {REQUESTS} requests, {AT_ONCE} at a time")
        assert peak < MEMORY_BOUND_MB
    finally:
        process.terminate()
        process.wait(timeout=20)
