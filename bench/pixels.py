"""The inspection path's pixel work on numpy + Pillow (andon.inspect) against the OpenCV calls it replaced.

    python -m bench.pixels [--rounds 5]

Side by side in one process, interleaved frame by frame (the machine is shared: only the ratios mean much):
for each card geometry (224 px, grey and RGB, stretched and letterboxed) and each of bench.serve's ten
synthetic 5 MP JPEGs, ``Preprocessor.decode`` / ``.resize`` / ``.to_tensor`` against what andon ran before
(``decoding.probe``, then ``cv2.imdecode`` with IMREAD_REDUCED_*_8; ``cv2.resize`` INTER_AREA and
``cv2.copyMakeBorder``; ``cv2.LUT`` per channel), and the largest difference between the two tensors.
Needs OpenCV: the ``[data]`` extra.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import cpu_model


def _opencv(spec):
    """The pre-2026-12-07 preprocessing, call for call."""
    import cv2

    from andon.inspect.decoding import probe

    gray = spec.color_mode == "gray"
    out_h, out_w = spec.input_size
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    table = np.arange(256, dtype=np.float32)[None, :] * (1.0 / std).reshape(3, 1) + (-mean / std).reshape(3, 1)
    tables = [np.ascontiguousarray(row.reshape(1, 256)) for row in table]

    def decode(data: bytes) -> np.ndarray:
        probe(data)  # the header and structure check, before any pixel: unchanged, as in andon's decode then
        flag = cv2.IMREAD_REDUCED_GRAYSCALE_8 if gray else cv2.IMREAD_REDUCED_COLOR_8
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        return image if gray else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def resize(pixels: np.ndarray) -> np.ndarray:
        h, w = pixels.shape[:2]
        if spec.resize == "stretch":
            image = cv2.resize(pixels, (out_w, out_h), interpolation=cv2.INTER_AREA)
        else:
            scale = min(out_w / w, out_h / h)
            new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
            inner = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)
            top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
            image = cv2.copyMakeBorder(
                inner, top, out_h - new_h - top, left, out_w - new_w - left, cv2.BORDER_CONSTANT, value=(0, 0, 0)
            )
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image

    def to_tensor(image: np.ndarray) -> np.ndarray:
        out = np.empty((3, *image.shape[:2]), dtype=np.float32)
        for channel, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
            cv2.LUT(plane, tables[channel], dst=out[channel])
        return out

    return decode, resize, to_tensor


def run(rounds: int, say=print) -> list[dict]:
    from andon.inspect.card import PreprocessSpec
    from andon.inspect.preprocess import Preprocessor
    from bench.serve import synthetic_frames

    say("rendering 10 synthetic 2448x2048 JPEG frames ...")
    frames = synthetic_frames()
    rows = []
    for mode in ("gray", "rgb"):
        for resize in ("stretch", "letterbox"):
            spec = PreprocessSpec(
                input_size=(224, 224), color_mode=mode, resize=resize, mean=(0.5,) * 3, std=(0.5,) * 3
            )
            pre = Preprocessor(spec)
            stages = {
                "andon": (pre.decode, pre.resize, pre.to_tensor),
                "opencv": _opencv(spec),
            }
            spent = {k: np.zeros(3) for k in stages}
            worst = 0.0
            for _ in range(rounds):
                for data in frames:
                    tensors = {}
                    for name, steps in stages.items():
                        value, times = data, []
                        for step in steps:
                            t0 = time.perf_counter()
                            value = step(value)
                            times.append(time.perf_counter() - t0)
                        spent[name] += times
                        tensors[name] = value
                    worst = max(worst, float(np.abs(tensors["andon"] - tensors["opencv"]).max()))
            n = rounds * len(frames)
            row = {"geometry": f"224 {mode} {resize}", "max_tensor_diff_levels": round(worst * 127.5, 2)}
            for name, total in spent.items():
                row[name] = {k: round(1000 * v / n, 3) for k, v in zip(("decode", "resize", "to_tensor"), total)}
            row["ratio"] = round(sum(row["andon"].values()) / sum(row["opencv"].values()), 3)
            say(json.dumps(row))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pixels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ten frames per geometry")
    args = parser.parse_args(argv)
    print(f"machine: {cpu_model()}")
    rows = run(args.rounds)
    print(
        "\n| geometry | andon decode / resize / to_tensor ms | OpenCV decode / resize / to_tensor ms "
        "| andon / OpenCV | max difference (grey levels) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        a, o = r["andon"], r["opencv"]
        print(
            f"| {r['geometry']} | {a['decode']} / {a['resize']} / {a['to_tensor']} | "
            f"{o['decode']} / {o['resize']} / {o['to_tensor']} | {r['ratio']}x | {r['max_tensor_diff_levels']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
