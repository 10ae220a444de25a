"""A malformed-upload corpus against the app: over 1,000 uploads of 17 kinds, none gets a 5xx, no bad
frame is stored (rows and files counted, every stored file re-read), and the process's resident memory
stays bounded while bombs arrive. Prints its figures (``pytest -s`` shows them)."""

from __future__ import annotations

import functools
import gzip
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from service_support import REJECT, client_for, count_rows, jpeg, png, settings_for, stored_files
from test_intake_decoding import (
    bad_iend_crc,
    bmp_bytes,
    cv2_jpeg,
    headers_only_jpeg,
    jpeg_claiming,
    png_bomb,
    png_claiming,
    textured,
    tiny_zip,
)

#: what each kind may be answered: refused kinds never 2xx; the others are real images (201) or refused
REFUSED = {
    "zero bytes": {422},
    "truncated": {422},
    "headers only": {422},
    "wrong magic": {422},
    "random bytes": {422},
    "huge dimension claim": {413, 422},
    "png bomb": {413},
    "bad CRC": {422},
    "gzip-labelled": {415},
    "wrong content-type": {415},
    "multipart tricks": {400, 413, 415, 422},
    "bad batch": {415, 422},
    "format not allowed": {415},
}
MAY_PASS = {
    "polyglot": {201},
    "bit flips in scan data": {201, 422},
    "good frame": {201},
    "good batch": {201},
}
RSS_BOUND_MB = 250


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # pragma: no cover - not Linux


@functools.cache
def _bases() -> dict[str, bytes]:
    return {
        "jpeg": cv2_jpeg(textured((96, 128), seed=3)),
        "reject jpeg": jpeg(REJECT),
        "png": png(REJECT, size=(64, 64)),
        "bmp": bmp_bytes(textured((40, 60), seed=4)),
        "big bomb": png_bomb(8000, 8000),  # 64 MP of zeros in ~62 KB: a full decode is ~384 MB
        "small bomb": png_bomb(1500, 1500),
    }


def _gif() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def _uploads(rng: random.Random):
    """(kind, request kwargs) for every upload of the corpus."""
    b = _bases()
    raw = {"params": {"camera_id": "cam1", "line_id": "L1"}}

    def body(data: bytes, content_type: str = "application/octet-stream", **headers):
        return {**raw, "content": data, "headers": {"Content-Type": content_type, **headers}}

    def form(files, data=None):
        return {"files": files, "data": {"camera_id": "cam1", "line_id": "L1"} if data is None else data}

    for i in range(40):
        yield "zero bytes", body(b"") if i % 2 else form({"frame": ("x.jpg", b"", "image/jpeg")})
    for _ in range(150):
        base = b[rng.choice(["jpeg", "png", "bmp"])]
        yield "truncated", body(base[: rng.randrange(1, len(base) - 1)])
    for _ in range(40):
        yield "headers only", body(headers_only_jpeg(b["jpeg"]))
    for _ in range(60):
        name, magic = rng.choice([("jpeg", 3), ("png", 8), ("bmp", 2)])
        data = bytearray(b[name])
        for at in rng.sample(range(magic), rng.randrange(1, magic + 1)):
            data[at] ^= rng.randrange(1, 256)
        yield "wrong magic", body(bytes(data))
    for _ in range(100):
        size = rng.choice([0, 1, 7, 100, 5000, 60_000])
        yield "random bytes", body(bytes(rng.getrandbits(8) for _ in range(size)))
    for _ in range(50):
        w, h = rng.randrange(2000, 60_000), rng.randrange(2000, 60_000)
        yield "huge dimension claim", body(jpeg_claiming(w, h) if rng.random() < 0.5 else png_claiming(w, h))
    for i in range(40):
        yield "png bomb", body(b["big bomb"] if i % 4 == 0 else b["small bomb"], "image/png")
    for _ in range(60):
        data = bytearray(b["png"])
        if rng.random() < 0.3:
            data = bytearray(bad_iend_crc(bytes(data)))
        else:
            at = rng.randrange(8, len(data))
            data[at] ^= 1 << rng.randrange(8)
        yield "bad CRC", body(bytes(data), "image/png")
    for i in range(50):
        data = gzip.compress(b["reject jpeg"]) if i % 2 else b["reject jpeg"]
        yield "gzip-labelled", body(data, "image/jpeg", **{"Content-Encoding": rng.choice(["gzip", "deflate", "br"])})
    for _ in range(50):
        ct = rng.choice(["text/plain", "application/json", "text/html", "application/x-www-form-urlencoded"])
        yield "wrong content-type", body(b["reject jpeg"], ct)
    tricks = [
        form(
            [("frame", ("a.jpg", b["reject jpeg"], "image/jpeg")), ("frame", ("b.jpg", b["reject jpeg"], "image/jpeg"))]
        ),
        form({"upload": ("a.jpg", b["reject jpeg"], "image/jpeg")}),
        form({"frame": ("a.jpg", b["reject jpeg"], "image/jpeg")}, {"line_id": "L1"}),
        form({"frame": ("a.jpg", b["reject jpeg"], "image/jpeg")}, {"camera_id": "cam1", "line_id": "L1", "x": "1"}),
        form({"frame": ("a.jpg", b["reject jpeg"], "image/jpeg")}, {"camera_id": "c" * 500, "line_id": "L1"}),
        form({"frame": ("../../etc/passwd", b"root:x:0:0", "image/jpeg")}),
        form({"frame": ("a.jpg", headers_only_jpeg(), "image/jpeg")}),
        body(b"--xyz\r\nContent-Disposition: form-data; name=frame\r\n\r\n" + b["reject jpeg"], "multipart/form-data"),
        body(b"--xyz\r\n\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz"),
        body(b"garbage without any boundary", "multipart/form-data; boundary=abc"),
    ]
    for i in range(120):
        yield "multipart tricks", tricks[i % len(tricks)]
    batches = [
        [("frame", ("a.jpg", b["reject jpeg"], "image/jpeg")), ("frame", ("b.jpg", headers_only_jpeg(), "image/jpeg"))],
        [
            ("frame", ("a.jpg", b["reject jpeg"], "image/jpeg")),
            ("frame", ("b.png", bad_iend_crc(b["png"]), "image/png")),
        ],
        [("frame", ("a.jpg", b"", "image/jpeg"))],
    ]
    for i in range(30):
        yield "bad batch", {"url": "/v1/inspections/batch", **form(batches[i % len(batches)])}
    yield "bad batch", {"url": "/v1/inspections/batch", **body(b["reject jpeg"], "image/jpeg")}
    for _ in range(20):
        yield "format not allowed", body(_gif(), "image/gif")
    zips = tiny_zip()
    for i in range(60):
        base = b["reject jpeg"] if i % 2 else b["png"]
        yield "polyglot", body(base + zips) if i % 3 else form({"frame": ("a.jpg", base + zips, "image/jpeg")})
    for _ in range(80):
        data = bytearray(b["jpeg"])
        start = data.index(b"\xff\xda") + 20
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(start, len(data) - 2)
            data[at] ^= 1 << rng.randrange(8)
        yield "bit flips in scan data", body(bytes(data), "image/jpeg")
    for i in range(60):
        yield "good frame", body(jpeg(REJECT, noise=i) if i % 2 else png(REJECT, size=(48, 48 + i)))
    for i in range(10):
        files = [("frame", (f"{j}.jpg", jpeg(REJECT, noise=100 + 3 * i + j), "image/jpeg")) for j in range(3)]
        yield "good batch", {"url": "/v1/inspections/batch", **form(files)}


@pytest.fixture
def client(tmp_path, tiny_model_path):
    settings = settings_for(tmp_path, tiny_model_path, allowed_formats="JPEG,PNG,BMP", max_body_bytes=1024 * 1024)
    with client_for(settings) as c:
        yield c


def test_a_malformed_upload_corpus_gets_no_5xx_and_stores_no_bad_frame(client):
    from andon.inspect.decoding import decode, probe
    from andon.service.tables import Inspection

    uploads = list(_uploads(random.Random(14)))
    assert len(uploads) >= 1000 and len({k for k, _ in uploads}) >= 12
    _bases()  # build the bombs before measuring memory
    rss_start = rss_peak = _rss_mb()
    answers: Counter = Counter()
    created = 0
    t0 = time.perf_counter()
    for kind, request in uploads:
        request = dict(request)
        url = request.pop("url", "/v1/inspections")
        r = client.post(url, **request)
        answers[(kind, r.status_code)] += 1
        assert r.status_code < 500, (kind, r.status_code, r.text[:300])
        assert r.status_code in (REFUSED.get(kind) or MAY_PASS[kind]), (kind, r.status_code, r.text[:300])
        if r.status_code == 201:
            created += len(r.json()["items"]) if url.endswith("/batch") else 1
        rss_peak = max(rss_peak, _rss_mb())
    seconds = time.perf_counter() - t0

    rows = count_rows(client)
    files = stored_files(client)
    ctx = client.app.state.ctx
    with ctx.sessions() as session:
        stored = session.execute(select(Inspection.image_key, Inspection.heatmap_key)).all()
    keys = [image for image, _ in stored if image is not None]
    maps = [heat for _, heat in stored if heat is not None]
    assert rows == created  # every record is a 201 answer; no refused frame left a row
    assert len(files) == len(keys) + len(maps) and keys  # a file for every stored image and map, no orphan
    for key in keys:
        data = ctx.store.get(key)
        header = probe(data)
        assert header.end == len(data), key  # stored without trailing data
        assert decode(data).size > 0
        assert b"PK\x03\x04" not in data
    assert rss_peak - rss_start < RSS_BOUND_MB

    kinds = sorted({k for k, _ in answers})
    print(f"\nmalformed-upload corpus: {len(uploads)} uploads of {len(kinds)} kinds in {seconds:.1f} s")
    for kind in kinds:
        statuses = ", ".join(f"{s} x {n}" for (k, s), n in sorted(answers.items()) if k == kind)
        print(f"  {kind:24s} {statuses}")
    print(f"  5xx: 0; records: {rows}, stored files: {len(files)} (all re-read: valid, no trailing data)")
    print(f"  RSS: {rss_start:.0f} MB at the start, {rss_peak:.0f} MB peak (+{rss_peak - rss_start:.0f} MB)")
