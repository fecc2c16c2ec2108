"""`lungseg serve`: the exported model behind HTTP (FastAPI + uvicorn), loopback by default.

POST /segment          body: the image file's bytes (PNG, JPEG or DICOM)
                       -> image/png mask (0/255, the input's size), QA fields in X-Lungseg-* headers
POST /segment?format=json
                       -> JSON with the QA fields (lung fraction, regions, confidence, flags) and the size
GET  /health           -> status, provider and the model card's code version and test metrics

Bad requests get a 4xx with a message and the service stays up: empty body (400), not an image (415),
body over the size limit (413), image over the pixel limit (413, PIL's decompression-bomb guard).
"""
from __future__ import annotations

import io as _io

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from PIL import Image

from lungseg.io import ImageReadError
from lungseg.predict import Segmenter, decode_input, mask_png

DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # a 16-bit 4k x 4k DICOM is about 32 MB
DEFAULT_MAX_PIXELS = 50_000_000  # PIL raises above 2x this; anything larger is not a chest film


def create_app(segmenter: Segmenter, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> FastAPI:
    Image.MAX_IMAGE_PIXELS = max_pixels // 2  # PIL's bomb error fires at twice this value
    app = FastAPI(title="lungseg", description="Lung masks for chest X-rays")
    card = segmenter.card

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "provider": segmenter.provider,
            "model": {
                "code_version": card.get("code_version", {}),
                "input_shape": card["input"]["shape"],
                "test_metrics": {k: v for k, v in card.get("test_metrics", {}).items() if k.count("/") == 1},
            },
            "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels},
        }

    @app.post("/segment")
    async def segment(request: Request, format: str = Query("png", pattern="^(png|json)$")) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"body of {declared} bytes is over the limit of {max_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise HTTPException(413, f"body is over the limit of {max_bytes} bytes")
        if not body:
            raise HTTPException(400, "empty body: send the image file's bytes (PNG, JPEG or DICOM)")
        try:
            image = decode_input(bytes(body), "request body")
        except ImageReadError as err:
            status = 413 if "too many pixels" in str(err) else 415
            raise HTTPException(status, str(err)) from None
        result = await run_in_threadpool(segmenter.predict, image)
        fields = {"width": int(image.shape[1]), "height": int(image.shape[0]), **result.qa}
        if format == "json":
            return JSONResponse(fields)
        buffer = _io.BytesIO()
        Image.fromarray(mask_png(result.mask)).save(buffer, format="PNG")
        headers = {f"X-Lungseg-{k.replace('_', '-')}": str(v) for k, v in fields.items()}
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)

    return app


def serve(model: str, host: str, port: int, device: str, threads: int, max_bytes: int) -> None:
    import uvicorn

    app = create_app(Segmenter(model, device=device, threads=threads), max_bytes=max_bytes)
    uvicorn.run(app, host=host, port=port, log_level="info")
