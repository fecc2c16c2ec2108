"""The deployed model in use: X-ray files in, masks, label maps, overlays, DICOM SEG and report.csv out.

Contract: for every input image, OUTPUT/<relative path>.png is an 8-bit mask (0 or 255) with exactly the
input's width and height (for DICOM: Rows x Columns), where <relative path> mirrors the input's path below the
folder it was found in (a known image suffix dropped, other names kept whole: DICOM files are often named by
UID). Beside it, on request: <name>_labels.png (1 = right lung, 2 = left lung), <name>_overlay.png,
<name>_probability.png, <name>.seg.dcm (DICOM inputs). report.csv lists every input with its result or its
problem.

Safety, checked before any work: the output folder may not be, or lie inside, an input folder, no output may
overwrite an input, and no result file already in the output folder is replaced unless asked (`overwrite`, which
then leaves each input only this run's results); two inputs whose outputs would collide keep the first and report
the second; one run at a time writes to an output folder (`claim_output`). Every file is written atomically
under a hidden temporary name; leftovers of a killed run are cleared at the start. A file that cannot be read
or segmented is one row of report.csv, never the end of the batch; only a failed write (a full disk) stops it,
and report.csv is still written for what was done when the disk allows it.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from lungseg.errors import UserError
from lungseg.runtime import files, imaging, lungs, qa
from lungseg.runtime.decode import DICOM_SUFFIXES, RASTER_SUFFIXES, ImageReadError, NotAnImage, Xray, read_xray
from lungseg.runtime.model_file import Model

OUTLINE_COLOURS = {lungs.RIGHT: (255, 60, 60), lungs.LEFT: (60, 140, 255)}  # RGB: right red, left blue
LOOKAHEAD = 4  # files decoded ahead of the model
KNOWN_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
EXTRA_OUTPUTS = {"labels": "_labels.png", "overlay": "_overlay.png", "probabilities": "_probability.png",
                 "seg": ".seg.dcm"}
REPORT_COLUMNS = [
    "file", "status", "mask", "labels", "overlay", "probability", "seg", "width", "height", "source_format",
    "bits_stored", "lung_fraction", "lung_box_share", "regions", "right_lung_pixels", "left_lung_pixels",
    "right_left_ratio", "right_lung_cm2", "left_lung_cm2", "pixel_spacing_mm", "pixel_spacing_source",
    "laterality_assumed", "mean_confidence", "uncertain_share", "qa_flags", "needs_review", "Modality",
    "ViewPosition", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
]
PATIENT_COLUMNS = ["PatientID", "PatientName", "AccessionNumber"]
REPORT = "report.csv"
RESULT_COLUMNS = ("mask", "labels", "overlay", "probability", "seg")  # report.csv's columns naming result files
CLAIM = ".lungseg-predict.lock"  # hidden: input listing never picks it up

log = logging.getLogger(__name__)


class OutputLocationError(UserError, ValueError):
    """The output location is unusable or would destroy inputs: refused before any work."""


class ResultError(UserError, ValueError):
    """One input's results cannot be made: reported in its row, the batch goes on."""


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) bool
    labels: np.ndarray  # (H, W) uint8: 0 background, 1 right lung, 2 left lung
    probabilities: np.ndarray  # (H, W) float32
    fields: dict  # QA fields, per-lung areas, laterality


class Segmenter:
    """A loaded model: gray pixels -> mask, right/left labels, probabilities, QA fields."""

    def __init__(self, model: Model):
        self.model = model

    @property
    def provider(self) -> str:
        return self.model.provider

    def framed_probabilities(self, pixels: np.ndarray) -> imaging.Framed:
        """The model's part: gray (H, W) -> lung probabilities at the model's size and the region they cover."""
        return imaging.predict_framed([pixels], self.model.run, self.model.image_size, self.model.intensity,
                                      self.model.threshold, self.model.lung_crop_margin, batch_size=1)[0]

    def complete(self, xray: Xray, framed: imaging.Framed) -> Prediction:
        """Everything after the model: full-size probabilities, mask, right/left lungs, areas, QA."""
        probabilities = framed.full_size(*xray.pixels.shape)
        mask = imaging.to_mask(probabilities, self.model.threshold, self.model.postprocess)
        right_on_left, assumed = lungs.patient_right_on_image_left(xray.dicom.get("PatientOrientation", ""))
        components = imaging.regions(mask)  # one connected-components pass for labelling and QA
        labels = lungs.label_lungs(components, right_on_left)
        area = lungs.areas(labels, xray.dicom.get("pixel_spacing_mm"))
        checks = qa.describe(mask, components, framed.probabilities, self.model.threshold,
                             self.model.lung_fraction_range, (area["right_lung_pixels"], area["left_lung_pixels"]),
                             self.model.lung_box_share_range)
        return Prediction(mask, labels, probabilities, {**area, "laterality_assumed": assumed, **checks})

    def predict(self, xray: Xray) -> Prediction:
        return self.complete(xray, self.framed_probabilities(xray.pixels))


def outline_overlay(pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The X-ray in RGB with each lung's outline drawn in its colour, line width scaled to the image."""
    picture = np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2))
    thickness = max(1, round(max(pixels.shape) / 256))
    for label, colour in OUTLINE_COLOURS.items():
        contours, _ = cv2.findContours((labels == label).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        picture = cv2.drawContours(picture, contours, -1, colour, thickness)
    return picture


def mask_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def probability_png(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as 16-bit integers: value / 65535 is the lung probability."""
    return np.rint(probabilities * 65535).astype(np.uint16)


@dataclass
class Job:
    """One input file and where its results go."""

    path: Path
    shown: str  # the input as reported: its path as given, or below the folder it was found in
    mask: Path | None  # None for an input that does not exist
    refused: str = ""  # why this input is not processed: it does not exist, or its outputs would collide
    replaces: list[Path] = field(default_factory=list)  # result files of any kind already there (--overwrite)


def _visible_files(folder: Path) -> tuple[list[Path], set[Path]]:
    """Every file below `folder` in a stable order, hidden files and folders left out, and the real folders
    walked. Linked folders are followed, each real folder once (a link loop ends there); a link to nothing is
    listed, so that it is reported as a file not found."""
    found, walked = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = Path(root).resolve()
        if real in walked:  # reached again through a link: a loop, or a second link to the same folder
            folders[:] = []
            continue
        walked.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found.extend(Path(root) / name for name in sorted(names) if not name.startswith("."))
    # regular files, and links to nothing (never a link to a pipe or a device, which reading would block on)
    return [path for path in found if path.is_file() or not path.exists()], walked


def output_name(relative: Path) -> Path:
    """in/a/b.dcm -> a/b; 1.2.840.5 (a UID-named DICOM) -> 1.2.840.5: only known image suffixes are dropped."""
    return relative.with_suffix("") if relative.suffix.lower() in KNOWN_SUFFIXES else relative


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _targets(job: Job, extras: set[str]) -> list[Path]:
    return [job.mask] + [job.mask.with_name(job.mask.stem + EXTRA_OUTPUTS[e]) for e in sorted(extras)]


@contextlib.contextmanager
def claim_output(output_dir: str | Path) -> Iterator[None]:
    """Hold an existing output folder for one run: another run into it meanwhile is refused (OutputLocationError)
    instead of replacing this one's report.csv or clearing its temporaries. An advisory lock (flock) on a hidden
    file, removed at the end and released however the process ends; where there is no flock (Windows), runs are
    not kept apart."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(output_dir) / CLAIM
    busy = OutputLocationError(f"--output {output_dir}: another lungseg predict is writing there; wait for it, or "
                               f"choose another folder")
    try:  # read-only: a claim file another user's killed run left behind does not lock this user out
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as err:
        raise OutputLocationError(f"--output {output_dir}: cannot hold the folder ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        except OSError as err:  # a file system without locks (some NFS mounts): runs are not kept apart there
            log.warning("--output %s: cannot lock %s (%s); another run into this folder would not be refused",
                        output_dir, CLAIM, err.strerror or err)
            yield
            return
        try:
            if os.fstat(descriptor).st_ino != os.stat(path).st_ino:  # a file a finishing run has just removed
                raise busy
        except FileNotFoundError:
            raise busy from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held: a run waiting on this file sees it gone
    finally:
        os.close(descriptor)


def plan(inputs: list[str | Path], output_dir: str | Path, extras: set[str], overwrite: bool = False) -> list[Job]:
    """The work: one Job per input file; an input that does not exist is a refused Job, reported like others.

    Raises OutputLocationError, before anything is written, when the output folder is an input folder or lies
    inside one, when an output would overwrite an input file, when an output (or report.csv) already exists and
    `overwrite` is off, or when the output folder cannot be created.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputLocationError(f"--output {output_dir} is a file, not a folder")
    jobs = []
    for item in map(Path, inputs):
        if item.is_dir():
            found, walked = _visible_files(item)
            if any(_inside(output_dir, folder) for folder in walked):
                raise OutputLocationError(f"--output {output_dir} is (inside) the input folder {item}: masks would "
                                          f"mix with, and be read back as, inputs; choose another folder")
            for path in found:
                relative = path.relative_to(item)
                jobs.append(Job(path, str(relative if len(inputs) == 1 else path),
                                output_dir / f"{output_name(relative)}.png"))
        elif item.is_file():
            jobs.append(Job(item, str(item), output_dir / f"{output_name(Path(item.name))}.png"))
        else:
            jobs.append(Job(item, str(item), None, refused=f"{item}: no such file or folder"))
    check_outputs(jobs, output_dir, extras, overwrite)
    return jobs


def check_outputs(jobs: list[Job], output_dir: str | Path, extras: set[str], overwrite: bool = False) -> None:
    """plan's checks of what the outputs would replace, and the output folder's creation; run again, on the same
    jobs, once a run holds the folder (claim_output), as another run may have written there meanwhile."""
    output_dir = Path(output_dir).resolve()
    input_files = {job.path.resolve() for job in jobs if job.mask}
    claimed: dict[Path, str] = {}
    for job in (job for job in jobs if job.mask):
        targets = _targets(job, extras)
        for target in targets:
            if target in input_files:
                raise OutputLocationError(f"{target} would overwrite the input file of the same name; choose an "
                                          f"--output folder outside the inputs")
        clash = next((claimed[t] for t in targets if t in claimed), None)
        if clash:
            job.refused = f"{job.shown}: not processed, its outputs would overwrite those of {clash}"
        else:
            claimed.update(dict.fromkeys(targets, job.shown))
            job.replaces = [target for target in _targets(job, set(EXTRA_OUTPUTS)) if target.exists()]
    for job in jobs:  # never another input's result of this run (chest.png's overlay name is chest_overlay.png's
        # mask), nor an input file
        job.replaces = [path for path in job.replaces
                        if claimed.get(path, job.shown) == job.shown and path.resolve() not in input_files]
    if not overwrite:
        existing = [path for job in jobs for path in job.replaces] + [p for p in [output_dir / REPORT] if p.exists()]
        if existing:
            raise OutputLocationError(
                f"--output {output_dir} already holds {len(existing)} result file{'s' * (len(existing) > 1)} of "
                f"these inputs (first: "
                f"{existing[0].relative_to(output_dir)}); choose a new folder, or pass --overwrite to replace them")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputLocationError(f"--output {output_dir}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise OutputLocationError(f"--output {output_dir}: folder is not writable")


@dataclass
class Options:
    overlay: bool = False
    probabilities: bool = False
    seg: bool = False
    patient_fields: bool = False

    def extras(self) -> set[str]:
        """The outputs written beside each mask: the label map always, the others when asked for."""
        return {"labels"} | {name for name in ("overlay", "probabilities", "seg") if getattr(self, name)}


@dataclass
class PredictionSummary:
    written: int = 0
    failed: list[str] = field(default_factory=list)  # "path: problem"
    skipped: list[str] = field(default_factory=list)  # not images: "path: reason"
    flagged: int = 0
    provider: str = ""
    seconds: float = 0.0
    stopped: str = ""  # why the batch stopped early (a failed write), else ""

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.written} masks written, {len(self.failed)} failed, {len(self.skipped)} skipped (not images), "
                f"{self.flagged} flagged for review, {self.seconds:.1f} s, {self.images_per_second:.1f} images/s "
                f"on {self.provider}")


def _read(job: Job) -> Xray | ImageReadError | None:
    if job.refused:
        return None
    try:
        return read_xray(job.path)
    except ImageReadError as err:
        return err


def _write_results(segmenter: Segmenter, job: Job, xray: Xray, framed: imaging.Framed, options: Options,
                   output_dir: Path) -> dict:
    result = segmenter.complete(xray, framed)
    shown = lambda path: str(path.relative_to(output_dir))  # noqa: E731  outputs are named within the folder
    row = {"mask": shown(job.mask), "width": xray.pixels.shape[1], "height": xray.pixels.shape[0],
           "source_format": xray.source_format, "bits_stored": xray.bits_stored, **result.fields,
           "status": "review" if result.fields["needs_review"] else "ok"}
    spacing = xray.dicom.get("pixel_spacing_mm")
    row.update({key: xray.dicom.get(key, "") for key in REPORT_COLUMNS[-5:] + PATIENT_COLUMNS})
    row.update(pixel_spacing_mm="x".join(f"{v:g}" for v in spacing) if spacing else "",
               pixel_spacing_source=xray.dicom.get("pixel_spacing_source", ""))
    extra = {name: job.mask.with_name(job.mask.stem + suffix) for name, suffix in EXTRA_OUTPUTS.items()}
    written: list[Path] = []

    def write(column: str, path: Path, data: bytes) -> None:
        files.write_bytes(path, data)
        written.append(path)
        row[column] = shown(path)

    try:
        if options.seg and xray.header is not None:
            from lungseg.runtime import dicom_seg  # highdicom: only when asked for

            try:
                seg = dicom_seg.segmentation_bytes(xray.header, result.labels, segmenter.model)
            except dicom_seg.SegError as err:  # no output for this file; the batch goes on
                raise ResultError(f"{job.shown}: {err}") from None
            write("seg", extra["seg"], seg)
        write("labels", extra["labels"], files.png_bytes(result.labels))
        if options.overlay:
            write("overlay", extra["overlay"], files.png_bytes(outline_overlay(xray.pixels, result.labels)))
        if options.probabilities:
            write("probability", extra["probabilities"], files.png_bytes(probability_png(result.probabilities)))
        write("mask", job.mask, files.png_bytes(mask_png(result.mask)))  # last: a mask means all outputs are there
    except Exception:
        for path in written:  # a failed input keeps none of this run's files either
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return row


def report_csv(rows: list[dict], patient_fields: bool) -> str:
    """report.csv's text: one row per input, empty cells where a value does not apply (integers stay integers)."""
    columns = REPORT_COLUMNS + (PATIENT_COLUMNS if patient_fields else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key, "") for key in columns})
    return buffer.getvalue()


def predict_files(segmenter: Segmenter, jobs: list[Job], output_dir: str | Path, options: Options,
                  show_progress: bool = True) -> PredictionSummary:
    """Write the results of every readable input, plus report.csv; problems are reported per file.

    Decoding the next files and post-processing and writing the previous ones run in a thread pool while the
    model runs (ONNX Runtime, OpenCV and PIL release the GIL), so I/O is hidden behind the model.
    """
    output_dir = Path(output_dir).resolve()
    files.clear_temporaries(output_dir, spare_folders_holding=CLAIM)  # a run into a sub-folder keeps its own
    summary = PredictionSummary(provider=segmenter.provider)
    results: list[tuple[Job, dict | Future]] = []
    write_failures: list[str] = []  # filled by the pool as soon as a write fails

    def note_failure(future: Future) -> None:
        if isinstance(future.exception(), files.OutputError):
            write_failures.append(str(future.exception()))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        reads: deque[Future] = deque(pool.submit(_read, job) for job in jobs[:LOOKAHEAD])
        for index, job in enumerate(tqdm(jobs, desc="predict", unit="img", disable=not show_progress)):
            xray = reads.popleft().result()
            if index + LOOKAHEAD < len(jobs):
                reads.append(pool.submit(_read, jobs[index + LOOKAHEAD]))
            if write_failures:
                results.append((job, {"status": f"not done: the batch stopped at a failed write: {write_failures[0]}"}))
            elif job.refused:
                results.append((job, {"status": f"error: {job.refused}"}))
            elif isinstance(xray, NotAnImage):
                results.append((job, {"status": f"skipped: {xray}"}))
            elif isinstance(xray, ImageReadError):
                results.append((job, {"status": f"error: {xray}"}))
            else:
                try:
                    framed = segmenter.framed_probabilities(xray.pixels)
                except Exception as err:  # one file's unexpected problem never ends the batch
                    results.append((job, _unexpected(job, err)))
                    continue
                future = pool.submit(_write_results, segmenter, job, xray, framed, options, output_dir)
                future.add_done_callback(note_failure)
                results.append((job, future))
        rows = [{"file": job.shown, **_settle(job, result)} for job, result in results]
    for (job, _), row in zip(results, rows):
        if row["status"].startswith(("error: ", "skipped: ")):  # inputs the batch never reached keep theirs
            _remove_replaced(job, row, keep=set())
        elif row["status"] in ("ok", "review"):  # an earlier run's kinds of result this run did not make
            _remove_replaced(job, row, keep={output_dir / row[column] for column in RESULT_COLUMNS if row.get(column)})
    summary.seconds = time.perf_counter() - start
    summary.stopped = write_failures[0] if write_failures else ""
    for row in rows:
        status = row["status"]
        if status.startswith("skipped: "):
            summary.skipped.append(status[len("skipped: "):])
        elif status.startswith(("error: ", "not done: ")):
            summary.failed.append(f"{row['file']}: {status.split(': ', 1)[1]}" if status.startswith("not done")
                                  else status[len("error: "):])
        else:
            summary.written += 1
            summary.flagged += bool(row.get("needs_review"))
    try:
        files.write_text(output_dir / REPORT, report_csv(rows, options.patient_fields))
    except files.OutputError as err:
        summary.stopped = summary.stopped or str(err)
    return summary


def _remove_replaced(job: Job, row: dict, keep: set[Path]) -> None:
    """An input keeps no result of an earlier run but those this run replaced (`keep`): a mask on disk is always
    this run's, and so is every file beside it."""
    for path in job.replaces:
        if path in keep:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            row["status"] += f" (its earlier {path.name} could not be removed: {err.strerror or err})"


def _settle(job: Job, result: dict | Future) -> dict:
    if not isinstance(result, Future):
        return result
    try:
        return result.result()
    except (files.OutputError, ResultError) as err:  # names the file
        return {"status": f"error: {err}"}
    except Exception as err:  # one file's unexpected problem (an odd DICOM header, ...) never ends the batch
        return _unexpected(job, err)


def _unexpected(job: Job, err: Exception) -> dict:
    """The row of an input that failed in a way no check foresaw: its name, the exception type and message."""
    return {"status": f"error: {job.shown}: {type(err).__name__}: {err}"}
