"""Review station latency with 100,000 stored inspections on SQLite, side by side with 1,000.

    python -m bench.review [--sizes 1000,100000,100000b] [--requests 200] [--out bench-review.json]

For each size (``100000b``: the worst backlog, every one of 100,000 frames flagged and waiting):

1. A data folder with a simulated line history (``andon.service.review.simulate``): 4 cameras on 2 lines over
   24 h, 3 % rejects and 6 % reviews, 70 % of the older flagged frames already judged, every flagged frame and
   1 % of the passes with an image key (as the service keeps them). At 100,000 records about 3,500 frames
   wait in the queue.
2. ``andon serve`` in its own process (SQLite WAL, synchronous=FULL: its defaults), an operator account, and a
   client that logs in through the form and keeps its connection open, as a browser does.
3. Timed, after a warm-up, one request at a time (the latency an operator sees):
   * queue page: ``GET /`` (the whole page: queue, counts, filters and the first part);
   * next-part load: ``GET /review/part/{id}``, walking the queue the way the page prefetches the next part;
   * verdict + next part: ``POST /v1/inspections/{id}/verdicts`` (a durable write) then the next part's fragment,
     i.e. one keystroke of the operator;
   * the queue with a camera filter, the queue list fragment, an older page (keyset cursor), the JSON queue API.
   Latencies are client-side wall times (HTTP included); p50 / p95 / p99 over ``--requests`` requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port

PASSWORD = "bench-password-1"
BUDGET_P95_MS = 100.0


def seed(data_dir: Path, records: int, backlog: bool = False) -> dict:
    from sqlalchemy import update

    from andon.service.db import make_engine, migrate, session_factory
    from andon.service.review.accounts import create_user
    from andon.service.review.simulate import LineHistory, simulate
    from andon.service.tables import Inspection

    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(data_dir / 'andon.db').resolve()}")
    migrate(engine)
    with session_factory(engine)() as s:
        history = LineHistory(frames=records, seed=1)
        if backlog:  # the worst case: every frame flagged and nobody has judged any
            history = LineHistory(frames=records, seed=1, reject_rate=0.4, review_rate=0.6, reviewed_share=0.0)
        counts = simulate(s, history)
        s.execute(
            update(Inspection)
            .where(Inspection.decision != "pass")
            .values(image_key="2026/11/25/" + Inspection.id + ".jpg")
        )
        s.execute(
            update(Inspection)
            .where(Inspection.decision == "pass", Inspection.id.like("%A"))
            .values(image_key="2026/11/25/" + Inspection.id + ".jpg")
        )  # ~1 in 32: a pass sample
        create_user(s, "bench", "operator", PASSWORD)
        s.commit()
    engine.dispose()
    return counts


def serve(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "andon", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/livez", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start: " + (proc.stderr.read() or b"").decode()[-2000:])


def login(client: httpx.Client) -> str:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    r = client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token, "next": "/"})
    r.raise_for_status()
    return re.search(r'data-csrf="([^"]+)"', r.text).group(1)


def timed(fn, n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {
        "n": len(ms),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ms), 1),
    }


def measure(url: str, n: int) -> dict:
    results = {}
    with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as client:
        csrf = login(client)
        page = client.get("/").text
        first = re.search(r'<article class="part" data-id="([^"]+)" data-next="([^"]*)"', page)
        state = {"next": first.group(2)}

        def ok(r: httpx.Response) -> httpx.Response:
            if r.status_code >= 400:
                raise RuntimeError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:200]}")
            return r

        def next_part() -> None:
            html = ok(client.get(f"/review/part/{state['next']}")).text
            state["next"] = re.search(r'data-next="([^"]*)"', html).group(1)

        results["queue page (GET /)"] = summary(timed(lambda: ok(client.get("/")), n))
        results["next-part load (GET /review/part/{id})"] = summary(timed(next_part, n))

        def verdict_and_next() -> None:
            target = state["next"]
            ok(
                client.post(
                    f"/v1/inspections/{target}/verdicts",
                    json={"verdict": "confirm_defect"},
                    headers={"X-CSRF-Token": csrf},
                )
            )
            html = ok(client.get(f"/review/part/{target}")).text
            state["next"] = re.search(r'data-next="([^"]*)"', html).group(1)

        waiting = int(re.search(r'id="waiting-count">(\d+)<', client.get("/").text).group(1))
        cycles = min(max(20, n // 2), waiting - 10)  # never run the queue dry
        results["verdict + next part (POST + GET)"] = summary(timed(verdict_and_next, cycles, warmup=3))
        results["queue page, camera filter"] = summary(
            timed(lambda: ok(client.get("/", params={"camera": "L1-cam2"})), n)
        )
        results["queue list fragment"] = summary(timed(lambda: ok(client.get("/review/queue")), n))
        older = re.search(r"cursor=([0-9]+\.[0-9A-Z]+)", client.get("/").text)
        if older:
            results["older page (keyset cursor)"] = summary(
                timed(lambda: ok(client.get("/", params={"cursor": older.group(1)})), n)
            )
        results["JSON queue API"] = summary(timed(lambda: ok(client.get("/v1/review/queue")), n))
        results["waiting"] = waiting
    return results


def run_size(records: int, n: int, backlog: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="andon-bench-review-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        counts = seed(data, records, backlog)
        seeded = time.perf_counter() - t0
        proc, url = serve(data)
        try:
            results = measure(url, n)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "records": counts["frames"],
        "backlog": backlog,
        "verdicts_seeded": counts["verdicts"],
        "seed_s": round(seeded, 1),
        "results": results,
    }


def table(runs: list[dict]) -> str:
    names = list(dict.fromkeys(k for r in runs for k in r["results"] if k != "waiting"))
    two = len(runs) >= 2
    head = (
        "| request | "
        + " | ".join(
            f"{r['records']:,} records{', all waiting' if r.get('backlog') else ''} p50 / p95 ms" for r in runs
        )
        + (f" | p95 {runs[1]['records']:,} / {runs[0]['records']:,} |" if two else " |")
    )
    lines = [head, "|" + " --- |" * (len(runs) + 1 + two)]
    for name in names:
        cells = [
            f"{r['results'][name]['p50']} / **{r['results'][name]['p95']}**"
            if name in r["results"]
            else "– (one page only)"
            for r in runs
        ]
        ratio = ""
        if two:
            ratio = " | "
            if all(name in r["results"] for r in runs[:2]):
                ratio += f"{runs[1]['results'][name]['p95'] / max(0.1, runs[0]['results'][name]['p95']):.2f}x"
        lines.append(f"| {name} | " + " | ".join(cells) + ratio + " |")
    lines.append(
        "| frames waiting in the queue | "
        + " | ".join(f"{r['results']['waiting']:,}" for r in runs)
        + (" | |" if two else " |")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="1000,100000,100000b",
        help="record counts to compare (comma-separated; "
        "a trailing b: every frame flagged and waiting, the worst backlog)",
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.sizes.split(","):
        size, backlog = int(spec.rstrip("b")), spec.endswith("b")
        print(f"seeding and measuring {size:,} records{' (backlog)' if backlog else ''} ...", file=sys.stderr)
        runs.append(run_size(size, args.requests, backlog))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(table(runs))
    if load:
        print(f"\nload average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    keys = ("queue page (GET /)", "next-part load (GET /review/part/{id})")
    verdict = all(r["results"][k]["p95"] < BUDGET_P95_MS for r in runs for k in keys)
    print(
        f"goal (queue page and next-part load p95 < {BUDGET_P95_MS:.0f} ms in every run, up to "
        f"{max(r['records'] for r in runs):,} records): {'met' if verdict else 'NOT met'}"
    )
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "load_average": load}, indent=2) + "\n")
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
