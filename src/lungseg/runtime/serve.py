"""`lungseg serve`: the exported model behind HTTP (FastAPI + uvicorn), loopback by default.

GET  /                 a review page: drop X-rays, see each lung outlined, QA flags and areas, download results
POST /segment          body: the image file's bytes (PNG, JPEG, TIFF or DICOM), ?format= one of
                       png (the mask, 0/255 at the input's size; QA fields in X-Lungseg-* headers), labels
                       (1 = right lung, 2 = left lung), json (QA fields, areas, DICOM identity), seg (a DICOM
                       Segmentation; DICOM inputs only), review (JSON with the pictures inline, for the page)
GET  /health           status, provider, the model card's code version and test metrics, the limits

Bad requests get a 4xx with a message and the service stays up: empty body or SEG of a non-DICOM (400), a body
that does not arrive within the body timeout (408), body over the size limit or image over the pixel limit
(413), not an image or a multipart form (415), a DICOM header a SEG cannot be made from (422). At most
MAX_CONCURRENT_REQUESTS are decoded and segmented at once, off the event loop; beyond MAX_QUEUED_REQUESTS
waiting, requests get 503 with Retry-After, so memory stays bounded whatever the load.
"""
from __future__ import annotations

import asyncio
import base64
from importlib import resources
from typing import Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from lungseg import __version__
from lungseg.runtime import files, limits
from lungseg.runtime.decode import ImageReadError, TooLargeError, decode_xray
from lungseg.runtime.predict import Segmenter, mask_png, outline_overlay

Format = Literal["png", "labels", "json", "seg", "review"]
IMAGE_TYPES = ["application/octet-stream", "image/png", "image/jpeg", "image/tiff", "application/dicom"]
ERRORS = {
    400: "empty body, or format=seg for an input that is not DICOM",
    408: "the body did not arrive within the body timeout",
    413: "body over the size limit, or an image over the pixel limit",
    415: "not a PNG, JPEG, TIFF or DICOM file (or a multipart form instead of the file's bytes)",
    422: "a format other than png, labels, json, seg or review; or format=seg for a DICOM whose header a SEG cannot "
         "be made from (missing UIDs, ...)",
    503: "busy: too many requests waiting; retry after the seconds in Retry-After",
}
SEGMENT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "The X-ray file's bytes as the body (curl --data-binary @xray.dcm), not a form.",
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
    },
    "responses": {
        "200": {"description": "The result in the requested format",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": {"type": "object"}}}},
        **{str(code): {"description": text, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"detail": {"type": "string"}}}}}} for code, text in ERRORS.items()},
    },
}


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def create_app(segmenter: Segmenter, max_bytes: int = limits.MAX_REQUEST_BYTES,
               max_concurrent: int = limits.MAX_CONCURRENT_REQUESTS, max_queued: int = limits.MAX_QUEUED_REQUESTS,
               body_timeout: float = limits.BODY_TIMEOUT_SECONDS) -> FastAPI:
    app = FastAPI(title="lungseg", version=__version__,
                  description="Lung masks for chest X-rays. Research use only, not for clinical use.")
    card = segmenter.model.card
    gate = asyncio.Semaphore(max_concurrent)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        """One sentence in `detail`, as every other error of this service, instead of FastAPI's list."""
        problems = "; ".join(f"{error['loc'][-1]}: {error['msg']}" for error in err.errors())
        return JSONResponse({"detail": problems}, status_code=422)
    admitted = 0  # requests inside the service: reading, waiting for the gate, or being processed

    def process(body: bytes, fmt: str) -> Response:
        """Decode, segment and encode: runs in a worker thread, never on the event loop."""
        try:
            xray = decode_xray(body, "request body")
        except ImageReadError as err:
            raise HTTPException(413 if isinstance(err, TooLargeError) else 415, str(err)) from None
        result = segmenter.predict(xray)
        fields = {"width": int(xray.pixels.shape[1]), "height": int(xray.pixels.shape[0]),
                  "source_format": xray.source_format, **result.fields,
                  **{k: v for k, v in xray.dicom.items() if k in ("Modality", "ViewPosition", "StudyInstanceUID",
                                                                  "SeriesInstanceUID", "SOPInstanceUID")}}
        if fmt == "json":
            return JSONResponse(fields)
        if fmt == "seg" or fmt == "review":
            seg, seg_error = None, None
            if xray.header is not None:
                from lungseg.runtime import dicom_seg

                try:
                    seg = dicom_seg.segmentation_bytes(xray.header, result.labels, segmenter.model)
                except dicom_seg.SegError as err:  # this request only
                    seg_error = str(err)
            elif fmt == "seg":
                raise HTTPException(400, "format=seg needs a DICOM input: a SEG references its source image")
            if fmt == "seg":
                if seg_error:
                    raise HTTPException(422, seg_error)
                return Response(seg, media_type="application/dicom")
            return JSONResponse({**fields, "seg_error": seg_error,
                                 "overlay": _data_url("image/png", files.png_bytes(
                                     outline_overlay(xray.pixels, result.labels))),
                                 "mask": _data_url("image/png", files.png_bytes(mask_png(result.mask))),
                                 "labels": _data_url("image/png", files.png_bytes(result.labels)),
                                 "seg": _data_url("application/dicom", seg) if seg else None})
        picture = result.labels if fmt == "labels" else mask_png(result.mask)
        headers = {f"X-Lungseg-{k.replace('_', '-')}": str(v) for k, v in result.fields.items()}
        return Response(files.png_bytes(picture), media_type="image/png", headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def review_page() -> HTMLResponse:
        return HTMLResponse(resources.files("lungseg.runtime").joinpath("static/review.html").read_text())

    @app.api_route("/health", methods=["GET", "HEAD"])
    def health() -> dict:
        return {
            "status": "ok",
            "provider": segmenter.provider,
            "model": {
                "code_version": card.get("code_version", {}),
                "input_shape": card["input"]["shape"],
                "test_metrics": {k: v for k, v in card.get("test_metrics", {}).items() if k.count("/") == 1},
                "intended_use": card.get("intended_use", ""),
            },
            "limits": {"max_bytes": max_bytes, "max_pixels": limits.MAX_PIXELS,
                       "max_concurrent": max_concurrent, "max_queued": max_queued},
            "busy": admitted,
        }

    @app.post("/segment", openapi_extra=SEGMENT_OPENAPI,
              responses={code: {"description": text} for code, text in ERRORS.items()})
    async def segment(request: Request, format: Format = Query("png")) -> Response:
        nonlocal admitted
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            raise HTTPException(415, "send the file's bytes as the request body (curl --data-binary @xray.png), "
                                     "not a multipart form (curl -F)")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"body of {declared} bytes is over the limit of {max_bytes} bytes")
        if admitted >= max_concurrent + max_queued:
            raise HTTPException(503, f"busy: {admitted} requests in progress; retry shortly",
                                headers={"Retry-After": "1"})
        admitted += 1
        try:
            body = bytearray()
            try:
                async with asyncio.timeout(body_timeout):  # a client that stops sending must not keep its place
                    async for chunk in request.stream():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise HTTPException(413, f"body is over the limit of {max_bytes} bytes")
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {body_timeout:g} s") from None
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read it; not an error of the service
            if not body:
                raise HTTPException(400, "empty body: send the image file's bytes (PNG, JPEG, TIFF or DICOM)")
            async with gate:
                return await run_in_threadpool(process, bytes(body), format)
        finally:
            admitted -= 1

    return app


def serve(segmenter: Segmenter, host: str, port: int, max_bytes: int,
          body_timeout: float = limits.BODY_TIMEOUT_SECONDS) -> None:
    import uvicorn

    uvicorn.run(create_app(segmenter, max_bytes=max_bytes, body_timeout=body_timeout), host=host, port=port,
                log_level="info", timeout_graceful_shutdown=limits.SHUTDOWN_GRACE_SECONDS)
