"""`lungseg predict` under hostile conditions: nothing already there is overwritten, a folder is never read
partly, a full disk or a kill leaves only complete files, and the exit code tells what happened."""
import contextlib
import csv
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungseg.cli import main
from lungseg.runtime import files
from conftest import BIN, SOURCES


@pytest.fixture
def folder(tmp_path, real_xray):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(real_xray[0]).save(inputs / f"{name}.png")
    return inputs


def predict(*args) -> int:
    return main(["predict", *map(str, args), "--quiet"])


def test_an_input_folder_as_output_is_refused_before_any_work(folder, tiny_onnx, capsys):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert predict(folder, "--model", tiny_onnx, "--output", folder) == 3
    assert "is (inside) the input folder" in capsys.readouterr().err
    assert predict(folder, "--model", tiny_onnx, "--output", folder / "masks") == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, nothing overwritten


def test_an_output_that_would_overwrite_an_input_file_is_refused(folder, tiny_onnx, tmp_path, capsys):
    code = predict(folder / "a.png", "--model", tiny_onnx, "--output", folder)
    assert code == 3 and "would overwrite the input file" in capsys.readouterr().err


def test_extra_outputs_never_take_the_name_of_another_inputs_mask(folder, tiny_onnx, tmp_path, capsys):
    Image.open(folder / "b.png").save(folder / "a_overlay.png")
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overlay") == 1
    with open(out / "report.csv", newline="") as handle:
        report = {row["file"]: row for row in csv.DictReader(handle)}
    assert report["a.png"]["overlay"] == "a_overlay.png"
    assert "outputs would overwrite those of a.png" in report["a_overlay.png"]["status"]
    assert Image.open(out / "a_overlay.png").mode == "RGB"  # the overlay of a.png, not a mask


def test_folders_are_read_whole_by_content(folder, tiny_onnx, tmp_path, real_xray, capsys):
    (folder / "sub").mkdir()
    Image.fromarray(real_xray[0]).save(folder / "sub" / "film.tiff")
    Image.fromarray(real_xray[0]).save(folder / "sub" / "noextension", format="PNG")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 0
    assert (out / "sub" / "film.png").is_file() and (out / "sub" / "noextension.png").is_file()
    printed = capsys.readouterr()
    assert "5 masks written, 0 failed, 1 skipped" in printed.out and "notes.txt" in printed.err


def test_an_unwritable_output_path_is_one_clear_line(folder, tiny_onnx, tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file")
    assert predict(folder, "--model", tiny_onnx, "--output", tmp_path / "file" / "out") == 3
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and "Traceback" not in err


def test_outputs_follow_the_umask(folder, tiny_onnx, tmp_path):
    previous = os.umask(0o022)
    try:
        predict(folder, "--model", tiny_onnx, "--output", tmp_path / "out")
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {0o644}


def test_a_full_disk_stops_the_batch_and_still_writes_the_report(folder, tiny_onnx, tmp_path, monkeypatch, capsys):
    real_write = files.write_bytes

    def disk_fills_after_the_first_image(path, data):
        # By name, not by count: two images' outputs are written concurrently, in either order.
        if str(path).endswith(".png") and not Path(path).name.startswith("a"):
            raise files.OutputError(f"{path}: cannot write (No space left on device)")
        real_write(path, data)

    monkeypatch.setattr(files, "write_bytes", disk_fills_after_the_first_image)
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 3
    err = capsys.readouterr().err
    assert "stopped: " in err and "No space left on device" in err
    with open(out / "report.csv", newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert len(statuses) == 3 and statuses[0] in ("ok", "review") and any("No space" in s for s in statuses)
    assert not [p for p in out.iterdir() if p.name.startswith(files.TEMPORARY_PREFIX)]


def test_a_killed_batch_leaves_only_complete_files_and_the_next_run_clears_its_temporaries(tmp_path, tiny_onnx):
    inputs = sorted(SOURCES.glob("shenzhen/images/*"))[:150]
    out = tmp_path / "out"
    process = subprocess.Popen([str(BIN / "lungseg"), "predict", *map(str, inputs), "--model", str(tiny_onnx),
                                "--output", str(out), "--quiet", "--probabilities"])
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.png"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert finished and not (out / "report.csv").exists()
    for path in finished:
        with Image.open(path) as picture:
            picture.load()  # every visible file is complete
    (out / f"{files.TEMPORARY_PREFIX}leftover-x.png").write_bytes(b"half")
    assert main(["predict", *map(str, inputs[:3]), "--model", str(tiny_onnx), "--output", str(out), "--quiet",
                 "--overwrite"]) == 0  # the first masks were finished before the kill
    assert not [p for p in out.iterdir() if p.name.startswith(files.TEMPORARY_PREFIX)]


def test_report_numbers_stay_integers_when_some_rows_are_errors(folder, tiny_onnx, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 1
    with open(out / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    good = [row for row in rows if row["status"] in ("ok", "review")]
    assert {row["width"] for row in good} == {"512"} and all(row["regions"].isdigit() for row in good)
    assert [row["width"] for row in rows if row["status"].startswith("error")] == [""]


def test_exit_codes(folder, tiny_onnx, tmp_path):
    assert predict(folder, "--model", tiny_onnx, "--output", tmp_path / "o1") == 0
    assert predict(folder / "missing.png", folder / "a.png", "--model", tiny_onnx, "--output", tmp_path / "o2") == 1
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--bogus"])
    assert usage.value.code == 2
    assert predict(folder, "--model", tmp_path / "none.onnx", "--output", tmp_path / "o3") == 3


def test_results_already_in_the_output_folder_are_kept_unless_overwrite_is_asked(folder, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"the user's own file")
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 3
    assert "already holds 1 result file of these inputs (first: b.png)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # refused before any work
    assert (out / "b.png").read_bytes() == b"the user's own file"
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overwrite") == 0
    assert Image.open(out / "b.png").mode == "L"
    assert predict(folder / "a.png", "--model", tiny_onnx, "--output", out) == 3  # a.png, report.csv exist now


def test_a_missing_input_is_a_row_of_the_report(folder, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(tmp_path / "nowhere.png", folder / "a.png", "--model", tiny_onnx, "--output", out) == 1
    with open(out / "report.csv", newline="") as handle:
        report = {row["file"]: row["status"] for row in csv.DictReader(handle)}
    assert report[str(tmp_path / "nowhere.png")] == f"error: {tmp_path / 'nowhere.png'}: no such file or folder"
    assert report[str(folder / "a.png")] in ("ok", "review")
    assert "1 masks written, 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize("failing", ["model run", "results"])
def test_an_unexpected_failure_of_one_file_is_its_row_and_the_batch_goes_on(folder, tiny_onnx, tmp_path, monkeypatch,
                                                                              capsys, failing):
    """In the model run (the main loop) or in making the results (a worker thread)."""
    from lungseg.runtime import predict as predict_module

    owner, name = ((predict_module.Segmenter, "framed_probabilities") if failing == "model run"
                   else (predict_module, "outline_overlay"))
    real = getattr(owner, name)

    def fails_on_a_quarter_size_image(*args):
        pixels = next(arg for arg in args if isinstance(arg, np.ndarray))
        if pixels.shape[0] == 128:
            raise RuntimeError("out of memory")
        return real(*args)

    Image.fromarray(np.asarray(Image.open(folder / "a.png"))[::4, ::4]).save(folder / "small.png")
    monkeypatch.setattr(owner, name, fails_on_a_quarter_size_image)
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overlay") == 1
    with open(out / "report.csv", newline="") as handle:
        report = {row["file"]: row["status"] for row in csv.DictReader(handle)}
    assert report["small.png"] == "error: small.png: RuntimeError: out of memory"
    assert [report[name] in ("ok", "review") for name in ("a.png", "b.png", "c.png")] == [True] * 3
    assert not (out / "small.png").exists()  # no mask without all of its outputs
    assert "Traceback" not in capsys.readouterr().err


def test_seg_without_highdicom_is_refused_before_any_work(folder, tiny_onnx, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "highdicom" else real_find_spec(name, *args))
    assert predict(folder, "--model", tiny_onnx, "--output", tmp_path / "out", "--seg") == 3
    assert "pip install 'lungseg[dicom]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_negative_thread_count_is_a_usage_error(folder, tiny_onnx, tmp_path):
    with pytest.raises(SystemExit) as usage:
        predict(folder, "--model", tiny_onnx, "--output", tmp_path / "out", "--threads", "-3")
    assert usage.value.code == 2


def test_an_input_that_fails_on_overwrite_keeps_no_mask_of_the_earlier_run(folder, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 0
    (folder / "b.png").write_bytes((folder / "b.png").read_bytes()[:200])  # the film is cut short since
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overwrite") == 1
    assert not (out / "b.png").exists() and not (out / "b_labels.png").exists()
    assert (out / "a.png").is_file() and (out / "c.png").is_file()


def test_a_thread_count_above_the_machines_cpus_is_a_usage_error(folder, tiny_onnx, tmp_path):
    with pytest.raises(SystemExit) as usage:
        predict(folder, "--model", tiny_onnx, "--output", tmp_path / "out", "--threads", str(os.cpu_count() + 1))
    assert usage.value.code == 2


def test_a_second_run_into_a_folder_in_use_is_refused(folder, tiny_onnx, tmp_path, capsys):
    from lungseg.runtime.predict import CLAIM, claim_output

    out = tmp_path / "out"
    out.mkdir()
    with claim_output(out):  # another lungseg predict, writing there
        assert predict(folder, "--model", tiny_onnx, "--output", out) == 3
        assert "another lungseg predict is writing there" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [CLAIM]
    assert not (out / CLAIM).exists()
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # its claim is gone too


def test_a_file_name_that_is_not_utf8_is_one_row_like_any_other(folder, tiny_onnx, tmp_path, capsys):
    odd = os.fsencode(folder) + b"/bad\xff\xfe.png"
    try:
        os.rename(folder / "a.png", odd)
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8 (macOS APFS)")
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 0
    report = (out / "report.csv").read_bytes()
    assert b"bad\xff\xfe.png" in report and report.count(b"\n") == 4  # header and three rows
    assert os.path.exists(os.fsencode(out) + b"/bad\xff\xfe.png")


def test_linked_folders_are_followed_once_and_a_dangling_link_is_an_error_row(folder, tiny_onnx, tmp_path, real_xray,
                                                                               capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(real_xray[0]).save(elsewhere / "d.png")
    (folder / "linked").symlink_to(elsewhere)
    (folder / "loop").symlink_to(folder)  # walked once, not forever
    (folder / "same").symlink_to(elsewhere)  # a second link to one folder: its files once, under the first name
    os.mkfifo(tmp_path / "pipe")
    (folder / "pipe.png").symlink_to(tmp_path / "pipe")  # a link to a pipe would block the reader: left out
    (folder / "gone.png").symlink_to(tmp_path / "nothing.png")
    out = tmp_path / "out"
    done = threading.Event()
    threading.Thread(target=_release_readers, args=(tmp_path / "pipe", done), daemon=True).start()
    try:
        assert predict(folder, "--model", tiny_onnx, "--output", out) == 1
    finally:
        done.set()
    assert "gone.png: file not found" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png") if "_" not in p.name) == ["a.png", "b.png", "c.png"]
    assert (out / "linked" / "d.png").is_file() and not (out / "same").exists()
    with open(out / "report.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 5
    assert predict(folder, "--model", tiny_onnx, "--output", elsewhere / "masks") == 3  # inside a linked input


def _release_readers(fifo: Path, done: threading.Event) -> None:
    """Should predict ever open the pipe, give it an end of file after a few seconds: the test then fails on the
    pipe's row instead of hanging."""
    time.sleep(5)
    while not done.is_set():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while someone reads
        except OSError:  # no reader
            pass
        time.sleep(0.5)


def test_overwrite_leaves_each_input_only_this_runs_results(folder, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overlay") == 0
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 3  # the overlays are results of these inputs
    assert "already holds 10 result files of these inputs" in capsys.readouterr().err  # 3 x 3 and report.csv
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overwrite") == 0
    assert not list(out.glob("*_overlay.png")) and len(list(out.glob("*_labels.png"))) == 3


def test_an_input_whose_write_fails_keeps_none_of_its_files(folder, tiny_onnx, tmp_path, monkeypatch):
    real_write = files.write_bytes

    def overlay_cannot_be_written(path, data):
        if Path(path).name == "b_overlay.png":
            raise files.OutputError(f"{path}: cannot write (No space left on device)")
        real_write(path, data)

    monkeypatch.setattr(files, "write_bytes", overlay_cannot_be_written)
    out = tmp_path / "out"
    assert predict(folder, "--model", tiny_onnx, "--output", out, "--overlay") == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith("b")]  # its labels, written first, are gone


def test_inputs_without_an_xray_exit_1(tmp_path, tiny_onnx, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "readme.txt").write_text("export notes")
    assert predict(inputs, "--model", tiny_onnx, "--output", tmp_path / "out") == 1
    assert "no X-ray found among the 1 input files" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_named_as_such(folder, tiny_onnx, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert predict(folder, "--model", tiny_onnx, "--output", tmp_path / "taken") == 3
    assert "is a file, not a folder" in capsys.readouterr().err


def test_overwrite_never_removes_another_inputs_result_or_an_input(tmp_path, tiny_onnx, real_xray):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("chest", "chest_overlay"):  # chest's overlay would be named as chest_overlay's mask
        Image.fromarray(real_xray[0]).save(inputs / f"{name}.png")
    out = tmp_path / "out"
    assert predict(inputs, "--model", tiny_onnx, "--output", out) == 0
    assert predict(inputs, "--model", tiny_onnx, "--output", out, "--overwrite") == 0
    assert (out / "chest.png").is_file() and (out / "chest_overlay.png").is_file()
    (out / "extra").mkdir()
    Image.fromarray(real_xray[0]).save(out / "extra" / "x_overlay.png")  # an input that lies in the output folder
    Image.fromarray(real_xray[0]).save(out / "extra" / "x.png")
    assert predict(out / "extra" / "x.png", out / "extra" / "x_overlay.png", "--model", tiny_onnx,
                   "--output", out / "extra" / "masks") == 0
    assert (out / "extra" / "x_overlay.png").is_file()


def test_an_input_skipped_on_overwrite_keeps_no_result_of_the_earlier_run(tmp_path, tiny_onnx, real_xray):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(real_xray[0]).save(inputs / "film", format="PNG")  # no extension: read by content
    Image.fromarray(real_xray[0]).save(inputs / "other.png")
    out = tmp_path / "out"
    assert predict(inputs, "--model", tiny_onnx, "--output", out) == 0
    (inputs / "film").write_text("not an image any more")
    assert predict(inputs, "--model", tiny_onnx, "--output", out, "--overwrite") == 0
    assert not (out / "film.png").exists() and not (out / "film_labels.png").exists()
    assert (out / "other.png").is_file()


def test_what_another_run_wrote_before_this_one_held_the_folder_is_not_replaced(folder, tiny_onnx, tmp_path,
                                                                               monkeypatch, capsys):
    from lungseg.runtime import predict as runtime_predict

    real_claim = runtime_predict.claim_output
    out = tmp_path / "out"

    @contextlib.contextmanager
    def another_run_finishes_first(output_dir):
        (out / "b.png").write_bytes(b"the other run's mask")  # between this run's first look and its claim
        with real_claim(output_dir):
            yield

    monkeypatch.setattr(runtime_predict, "claim_output", another_run_finishes_first)
    assert predict(folder, "--model", tiny_onnx, "--output", out) == 3
    assert "already holds 1 result file of these inputs (first: b.png)" in capsys.readouterr().err
    assert (out / "b.png").read_bytes() == b"the other run's mask"


def test_a_claim_file_removed_by_a_finishing_run_is_not_taken_as_held(tmp_path, monkeypatch):
    import fcntl

    from lungseg.runtime.predict import OutputLocationError, claim_output

    other = claim_output(tmp_path)
    other.__enter__()
    real_flock = fcntl.flock

    def the_other_run_ends_between_open_and_lock(descriptor, operation):
        other.__exit__(None, None, None)  # removes its claim file, then lets go of it
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", the_other_run_ends_between_open_and_lock)
    with pytest.raises(OutputLocationError, match="another lungseg predict is writing there"):
        with claim_output(tmp_path):
            pass


def test_a_folder_that_cannot_be_locked_is_still_written_with_a_warning(folder, tiny_onnx, tmp_path, monkeypatch,
                                                                        caplog):
    import errno
    import fcntl

    def no_locks_here(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks_here)
    assert predict(folder, "--model", tiny_onnx, "--output", tmp_path / "out") == 0
    assert "cannot lock .lungseg-predict.lock (No locks available)" in caplog.text
