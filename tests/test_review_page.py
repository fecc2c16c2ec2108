"""The review page of `lungseg serve`, in a real browser: upload X-rays, see the outlines appear with their QA
flags and areas, download the results, and see a bad file's error."""
import subprocess

import numpy as np
import pytest
from PIL import Image

from browser import browser_page
from conftest import BIN, free_port, wait_for_http
from dicom_files import make_dicom

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service(tiny_onnx):
    port = free_port()
    process = subprocess.Popen([str(BIN / "lungseg"), "serve", "--model", str(tiny_onnx), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", process)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


def test_upload_shows_outlines_flags_and_downloads(service, tmp_path, real_xray):
    image = real_xray[0]
    Image.fromarray(image).save(tmp_path / "film.png")
    make_dicom(tmp_path / "study.dcm", image.astype(np.uint16) * 16, 12, window=(2047.5, 4096),
               PatientOrientation=["L", "F"], ImagerPixelSpacing=[0.2, 0.2], PatientName="Test", PatientID="1",
               StudyDate="20260101", StudyTime="1200", StudyID="1", AccessionNumber="")
    (tmp_path / "notes.png").write_text("not an image")
    with browser_page(downloads=True) as page:
        page.goto(service + "/")
        assert "not for clinical use" in page.content()
        page.get_by_test_id("file-input").set_input_files(
            [str(tmp_path / "film.png"), str(tmp_path / "study.dcm"), str(tmp_path / "notes.png")])
        page.wait_for_function("document.querySelectorAll('[data-testid=result] [data-testid]').length >= 3")
        page.wait_for_selector("[data-testid=overlay] >> nth=1", timeout=60_000)
        results = page.get_by_test_id("result")
        assert results.count() == 3
        texts = {results.nth(i).locator("h2").inner_text(): results.nth(i) for i in range(3)}
        film = texts["film.png"]
        assert film.get_by_test_id("overlay").evaluate("img => img.naturalWidth") == 512
        assert film.get_by_test_id("qa").inner_text().startswith(("ok", "review"))
        assert "px" in film.inner_text() and "assumed" in film.inner_text()
        assert "cm\u00b2" in texts["study.dcm"].inner_text()
        with page.expect_download() as download:
            texts["study.dcm"].get_by_test_id("download-SEG").click()
        saved = tmp_path / "downloaded.seg.dcm"
        download.value.save_as(saved)
        import pydicom

        assert pydicom.dcmread(saved).Modality == "SEG"
        with page.expect_download() as download:
            film.get_by_test_id("download-mask").click()
        download.value.save_as(tmp_path / "mask.png")
        assert Image.open(tmp_path / "mask.png").size == (512, 512)
        assert "not an image" in texts["notes.png"].get_by_test_id("error").inner_text()
