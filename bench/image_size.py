"""The service image's size without Docker: its venv built as deploy/Dockerfile.serve builds it, measured, and run.

    python -m bench.image_size [--extras serve,s3] [--keep DIR] [--json out.json]

1. a fresh venv, ``pip install --no-compile ".[EXTRAS]"`` from this checkout (the Dockerfile's line), then
   ``deploy/slim-venv.sh`` (the Dockerfile's next step, the same file);
2. its size on disk (``du``) and gzipped (``tar | gzip -6``, about what a registry stores), the largest packages,
   and the image's estimate: the venv plus ``python:3.12-slim-bookworm`` (BASE_MB, its published size: no
   Docker daemon here to measure it);
3. a run in that venv, so the number is of a venv that works: ``andon serve`` started for real (uvicorn, uvloop,
   httptools) until /readyz answers, then a dark frame posted through the API (decoded, inspected, flagged,
   stored with its heatmap) and its overlay fetched; with the ``s3`` extra the frame goes to an S3 bucket on a
   moto server (started from this environment, which has moto: the ``[dev]`` extra), so the pruned botocore
   is exercised too. OpenCV, matplotlib and torch must not be installed in the venv at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
#: python:3.12-slim-bookworm, linux/amd64, uncompressed (Docker Hub lists about 41-45 MB compressed)
BASE_MB = 125
BASE_GZ_MB = 45
GOAL_MB = 400
ABSENT = ("cv2", "matplotlib", "torch", "torchvision", "albumentations")

_RUN = r"""
import importlib.util, io, json, sys
import httpx
import numpy as np
from PIL import Image

absent = [m for m in ABSENT if importlib.util.find_spec(m) is not None]
base = sys.argv[1]
frame = np.zeros((48, 64, 3), np.uint8)  # dark: the tiny model flags it, so it is stored with its heatmap
buf = io.BytesIO()
Image.fromarray(frame).save(buf, format="JPEG", quality=90)
r = httpx.post(f"{base}/v1/inspections", content=buf.getvalue(), params={"camera_id": "c1", "line_id": "L1"},
               headers={"content-type": "image/jpeg"}, timeout=30)
assert r.status_code == 201, r.text
body = r.json()
overlay = httpx.get(f"{base}/v1/inspections/{body['id']}/heatmap", timeout=30)
assert overlay.status_code == 200, overlay.text
print(json.dumps({"absent_but_installed": absent, "decision": body["decision"], "stored": body["image_stored"],
                  "overlay": Image.open(io.BytesIO(overlay.content)).format}))
"""


def build(venv: Path, extras: str, say=print) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    say(f"pip install --no-compile .[{extras}] into {venv} ...")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-compile", f"{REPO}[{extras}]"],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    say("deploy/slim-venv.sh ...")
    subprocess.run(["sh", str(REPO / "deploy" / "slim-venv.sh"), str(venv)], check=True)
    return time.perf_counter() - started


def measure(venv: Path, top: int = 12) -> dict[str, object]:
    def kib(path: Path) -> int:
        du = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
        return int(du.stdout.split()[0])

    site = next(venv.glob("lib/python*/site-packages"))
    packages = sorted(((kib(p), p.name) for p in site.iterdir()), reverse=True)[:top]
    tar = subprocess.Popen(["tar", "-C", str(venv.parent), "-cf", "-", venv.name], stdout=subprocess.PIPE)
    gz = subprocess.run(["gzip", "-6"], stdin=tar.stdout, capture_output=True, check=True)
    tar.wait()
    disk_mb = kib(venv) / 1024
    return {
        "venv_mb": round(disk_mb, 1),
        "venv_gz_mb": round(len(gz.stdout) / 2**20, 1),
        "image_mb_estimate": round(disk_mb + BASE_MB),
        "image_pull_mb_estimate": round(len(gz.stdout) / 2**20 + BASE_GZ_MB),
        "largest": [{"package": name, "mb": round(k / 1024, 1)} for k, name in packages],
    }


def smoke(venv: Path, extras: str, work: Path, say=print) -> dict[str, object]:
    """andon serve from the venv, a flagged frame through it; to an S3 bucket on moto with the s3 extra."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_onnx import write_tiny_model

    model = write_tiny_model(work / "tiny.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANDON_", "AWS_", "PYTHON"))}
    env.update(ANDON_DATA_DIR=str(work / "data"), ANDON_MIN_FREE_DISK_MB="0")
    moto = None
    if "s3" in extras.split(","):
        from s3_support import moto_server, new_bucket

        moto = moto_server()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env.update(
            ANDON_IMAGE_STORE="s3",
            ANDON_S3_ENDPOINT_URL=endpoint,
            ANDON_S3_BUCKET=new_bucket(endpoint),
            ANDON_S3_REGION="us-east-1",
            ANDON_S3_ACCESS_KEY_ID="testing",
            ANDON_S3_SECRET_ACCESS_KEY="testing",
            AWS_CONFIG_FILE=str(work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
        )
    port = free_port()
    log = work / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "andon"), "serve", "--model", str(model), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    try:
        wait_ready(proc, port, log)
        say(f"andon serve from the venv is ready on {port}; posting a frame")
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"ABSENT = {ABSENT!r}\n" + _RUN, f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        if run.returncode != 0:
            raise SystemExit(f"the frame did not go through the venv's service:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        if moto is not None:
            from s3_support import admin

            listed = admin(env["ANDON_S3_ENDPOINT_URL"]).list_objects_v2(Bucket=env["ANDON_S3_BUCKET"])
            result["s3_objects"] = sorted(o["Key"] for o in listed.get("Contents", []))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if moto is not None:
            moto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.image_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="serve,s3", help="the Dockerfile's EXTRAS (default: serve,s3)")
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="andon-image-"))
    venv = args.keep or work / "venv"
    if venv.exists():
        parser.error(f"{venv} exists; give a new folder to --keep")
    try:
        seconds = build(venv, args.extras)
        figures = measure(venv)
        figures.update(extras=args.extras, build_s=round(seconds), smoke=smoke(venv, args.extras, work))
    finally:
        shutil.rmtree(work / "data", ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    run = figures["smoke"]
    ok = run["absent_but_installed"] == [] and run["stored"]
    print(json.dumps(figures, indent=2))
    verdict = "under" if figures["image_mb_estimate"] < GOAL_MB else "OVER"
    s3 = f", S3 objects: {len(run['s3_objects'])}" if "s3_objects" in run else ""
    print(
        f"venv {figures['venv_mb']} MB on disk ({figures['venv_gz_mb']} MB gzipped); image about "
        f"{figures['image_mb_estimate']} MB with a {BASE_MB} MB python:3.12-slim base: {verdict} the {GOAL_MB} MB "
        f"goal; the venv's service {'works' if ok else 'FAILED'} ({run['decision']}, stored: {run['stored']}{s3})"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
