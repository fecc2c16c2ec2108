"""Limits on what one input may cost, in one place: every decoder, `lungseg predict` and `lungseg serve` use them."""

# Decoded pixels of one input (frames x rows x columns; an RGB pixel counts once), checked from the file's
# header before any pixel data is decoded. The largest chest detectors are about 4300 x 4300 (18.5 megapixels);
# 50 megapixels leaves room for any real film while a decompression bomb is refused before it takes memory.
MAX_PIXELS = 50_000_000

# A deflated DICOM dataset is inflated whole before it can be read. A 4300 x 4300 16-bit film inflates to 37 MB;
# beyond 64 MiB the file is refused, so a small file cannot take memory and minutes of parsing.
MAX_INFLATED_DICOM_BYTES = 64 * 1024 * 1024

# Largest HTTP request body `lungseg serve` reads: a 16-bit 4k x 4k DICOM is about 32 MB.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

# Requests `lungseg serve` decodes and segments at once; more wait in line up to MAX_QUEUED, beyond that the
# answer is 503 with Retry-After. Bounds the service's memory whatever the load.
MAX_CONCURRENT_REQUESTS = 2
MAX_QUEUED_REQUESTS = 16

# Seconds `lungseg serve` waits for a request's whole body (a client that stops sending gets 408 and frees its
# place), and at most for requests in flight once told to stop.
BODY_TIMEOUT_SECONDS = 60
SHUTDOWN_GRACE_SECONDS = 30
