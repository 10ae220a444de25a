"""Two ``andon serve`` replicas behind Debian's nginx, sharing one PostgreSQL database and one data folder
(issue 16; docs/scaling.md).

Real processes throughout: a throwaway PostgreSQL cluster (the ``postgres_server`` fixture), two replicas
forked from a warm zygote (``bench.durability``) on their own loopback ports, both with the same database
URL and ``--data-dir`` (the images folder and the model registry on this disk), and nginx started on
``deploy/nginx.conf`` itself: only its upstream ``server`` lines, its ``listen`` line and nginx's own temp
paths are changed, so the file that ships is the file tested.

* a camera's retry that lands on the other replica is answered from the first replica's record;
* a body over the service's cap gets the replica's JSON 413 through nginx, one over nginx's cap nginx's own
  413 in the same JSON shape;
* kill -9 of a replica under load through nginx: every 2xx the clients got is in the database with its
  image (the posted bytes' sha256), keyed frames in flight are resent by nginx to the survivor (no client
  sees an error), keyless ones are never resent (no part is recorded twice), the load goes on through the
  survivor, and the killed replica rejoins under load;
* a model promoted through one replica is served by the other within ``registry_poll_s`` (+ the load).

Skips when nginx is absent (Debian: ``apt-get install nginx-light``; ``make system-deps`` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for the bench package

from bench.durability import Server, Zygote, frame_pool, free_port  # noqa: E402

NGINX_CONF = REPO / "deploy" / "nginx.conf"
#: how often the replicas look for a promoted model in this test
POLL_S = 0.5


def _nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


pytestmark = pytest.mark.skipif(
    _nginx() is None, reason="nginx is not installed: apt-get install nginx-light ('make system-deps' does)"
)


def nginx_config(ports: list[int], listen: int, prefix: Path) -> str:
    """deploy/nginx.conf with the test's replicas and port, and nginx's temp files under ``prefix``."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^(\s*)server andon-\d+:\d+(.*);$", text, flags=re.M)
    assert len(servers) == len(ports), f"deploy/nginx.conf has {len(servers)} upstream servers, the test {len(ports)}"
    lines = iter(ports)
    text = re.sub(r"server andon-\d+:\d+", lambda _m: f"server 127.0.0.1:{next(lines)}", text)
    text, listens = re.subn(r"^(\s*)listen 8080;$", rf"\1listen 127.0.0.1:{listen};", text, flags=re.M)
    assert listens == 1, "deploy/nginx.conf should have one 'listen 8080;' line"
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", "http {\n" + temp, 1)


@dataclass
class Cluster:
    url: str  # the database
    data_dir: Path
    replicas: list[Server]
    ports: list[int]
    nginx_url: str
    access_log: Path
    camera_key: str
    engineer_key: str
    zygote: Zygote
    logs: Path
    model_v2: Path
    engine: object = None

    def start_replica(self, i: int, *, model: Path | None) -> Server:
        env = {"ANDON_DATABASE_URL": self.url, "ANDON_REGISTRY_POLL_S": str(POLL_S)}
        server = Server(
            self.data_dir, self.ports[i], self.logs / f"replica{i}.log", model=model, zygote=self.zygote, env=env
        )
        self.replicas[i] = server
        return server

    def rows(self) -> dict[str, tuple]:
        """id -> (image_key, body_sha256, idempotency_key, part_id) of every stored inspection."""
        from sqlalchemy import text

        with self.engine.connect() as conn:  # type: ignore[attr-defined]
            found = conn.execute(text("SELECT id, image_key, body_sha256, idempotency_key, part_id FROM inspections"))
            return {r[0]: tuple(r[1:]) for r in found}


@pytest.fixture(scope="module")
def cluster(postgres_server, tmp_path_factory):
    from sqlalchemy import create_engine

    from andon.service.auth import create_key
    from andon.service.domain import open_service
    from andon.service.settings import Settings
    from tiny_onnx import tiny_card, write_tiny_model

    root = tmp_path_factory.mktemp("replicas")
    data_dir, logs, prefix = root / "data", root / "logs", root / "nginx"
    for folder in (data_dir, logs, prefix):
        folder.mkdir()
    model = write_tiny_model(root / "tiny-v1.onnx")
    model_v2 = write_tiny_model(root / "tiny-v2.onnx", tiny_card(version="2"))
    url = postgres_server.new_database()
    with open_service(Settings.load(data_dir=data_dir, database_url=url)) as service:  # migrates
        with service.sessions() as session:
            _, camera_key = create_key(session, role="camera", camera_id="cam1")
            _, engineer_key = create_key(session, role="engineer")
            session.commit()

    ports = [free_port(), free_port()]
    zygote = Zygote()
    c = Cluster(
        url=url,
        data_dir=data_dir,
        replicas=[None, None],
        ports=ports,
        nginx_url="",
        access_log=logs / "nginx-access.log",
        camera_key=camera_key,
        engineer_key=engineer_key,
        zygote=zygote,
        logs=logs,
        model_v2=model_v2,
    )
    nginx = None
    try:
        c.start_replica(0, model=model)  # registers and promotes v1 in the shared registry
        c.start_replica(1, model=None)  # finds it there (at start, or at its next registry poll)
        for server in c.replicas:
            server.wait_ready(60)
        listen = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(ports, listen, prefix))
        directives = "daemon off; pid " + str(prefix / "nginx.pid") + ";"
        if os.geteuid() == 0:
            directives += " user root;"  # workers must reach the temp paths under pytest's private folder
        with open(c.access_log, "ab") as out:
            nginx = subprocess.Popen(
                [_nginx(), "-p", str(prefix), "-c", str(conf), "-e", str(logs / "nginx-error.log"), "-g", directives],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        c.nginx_url = f"http://127.0.0.1:{listen}"
        _wait_nginx(nginx, c.nginx_url, logs / "nginx-error.log")
        c.engine = create_engine(url)
        yield c
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        for server in c.replicas:
            if server is not None:
                server.signal(9)
                with contextlib.suppress(RuntimeError):
                    server.wait_gone(20)
        zygote.close()
        if c.engine is not None:
            c.engine.dispose()  # type: ignore[attr-defined]


def _wait_nginx(proc: subprocess.Popen, url: str, error_log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}): {error_log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/livez", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("nginx did not answer /livez within 20 s")


def _headers(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _post(client, base: str, frame: bytes, key: str, idem: str | None, part: str | None = None):
    params = {"camera_id": "cam1", "line_id": "L1"}
    if part:
        params["part_id"] = part
    return client.post(f"{base}/v1/inspections", content=frame, params=params, headers=_headers(key, idem))


def test_a_retry_on_the_other_replica_is_answered_from_the_first_record(cluster):
    import httpx

    frame = frame_pool(count=1, seed=101)[0]
    key = f"frame-{uuid.uuid4().hex}"
    a, b = cluster.replicas[0].url, cluster.replicas[1].url
    with httpx.Client(timeout=30) as client:
        first = _post(client, a, frame, cluster.camera_key, key)
        assert first.status_code == 201, first.text
        assert "Idempotent-Replayed" not in first.headers
        # the camera timed out and sent it again; this time it reached replica B
        retry = _post(client, b, frame, cluster.camera_key, key)
        assert retry.status_code in (200, 201), retry.text
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.json()["id"] == first.json()["id"]
        # and through nginx, whichever replica it picks (least_conn: an idle pair alternates)
        for _ in range(2):
            via = _post(client, cluster.nginx_url, frame, cluster.camera_key, key)
            assert via.headers.get("Idempotent-Replayed") == "true", via.text
            assert via.json()["id"] == first.json()["id"]
        # the same key with other bytes is refused on the other replica too, naming the key
        other = _post(client, b, frame_pool(count=1, seed=102)[0], cluster.camera_key, key)
        assert other.status_code == 422
        assert other.json()["error"] == "idempotency_key_reused" and key in other.json()["message"]
    stored = [r for r in cluster.rows().values() if r[2] == key]
    assert len(stored) == 1 and stored[0][1] == hashlib.sha256(frame).hexdigest()
    served = _upstreams(cluster)
    assert {f"127.0.0.1:{p}" for p in cluster.ports} <= served, f"nginx used only {served}"


def test_a_body_over_a_cap_gets_json_from_nginx_or_the_service(cluster):
    import httpx

    error_log = cluster.logs / "nginx-error.log"
    with httpx.Client(timeout=60) as client:
        # over the service's 25 MiB but under nginx's 26 MiB: the replica's own 413 passes through
        before = len(error_log.read_text(errors="replace").splitlines())
        r = _post(client, cluster.nginx_url, b"\xff" * (25 * 1024 * 1024 + 4096), cluster.camera_key, None)
        assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
        assert "the limit of 26,214,400 bytes" in r.json()["message"]  # the replica's own words
        # and the replica ended it cleanly: a reset would count as a failure of a healthy replica (max_fails)
        upstream_errors = [x for x in error_log.read_text(errors="replace").splitlines()[before:] if "upstream" in x]
        assert upstream_errors == []
        # over nginx's cap: nginx answers, in the same shape
        r = _post(client, cluster.nginx_url, b"\xff" * (27 * 1024 * 1024), cluster.camera_key, None)
        assert r.status_code == 413 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "body_too_large" and "cap of the proxy" in r.json()["message"]


def _upstreams(cluster) -> set[str]:
    found = set()
    for line in cluster.access_log.read_text(errors="replace").splitlines():
        m = re.search(r"upstream=(\S+)", line)
        if m:
            found |= {u.strip() for u in m.group(1).split(",") if u.strip() and u.strip() != "-"}
    return found


def test_c_a_model_promoted_on_one_replica_is_served_by_the_other_within_the_poll(cluster):
    import httpx

    a, b = cluster.replicas[0].url, cluster.replicas[1].url
    engineer = {"Authorization": f"Bearer {cluster.engineer_key}"}
    with httpx.Client(timeout=60) as client:
        added = client.post(
            f"{a}/v1/models",
            content=cluster.model_v2.read_bytes(),
            headers={**engineer, "Content-Type": "application/octet-stream"},
        )
        assert added.status_code in (200, 201), added.text
        assert client.get(f"{b}/readyz").json()["model_version"] == "1"
        promoted = client.post(f"{a}/v1/models/2/promote", headers=engineer)
        assert promoted.status_code == 200, promoted.text
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 10:
            if client.get(f"{b}/readyz").json()["model_version"] == "2":
                seen = time.monotonic() - t0
                break
            time.sleep(0.02)
        assert seen is not None, "replica B never served the promoted model"
        print(f"\nreplica B served the model promoted on A after {seen:.2f} s (registry_poll_s {POLL_S})")
        # the bound: one poll interval, plus loading and warming the model (milliseconds for this one; 1.5 s
        # of slack for two shared cores)
        assert seen < POLL_S + 1.5
        frame = frame_pool(count=1, seed=103)[0]
        judged = _post(client, b, frame, cluster.camera_key, None)
        assert judged.status_code == 201 and judged.json()["model_version"] == "2"


def _diagnosis(cluster, load: Load) -> str:
    """What nginx and the replicas said, in a few lines: what a failed run needs to be understood from CI's log."""
    from collections import Counter

    def counted(lines) -> str:
        return "; ".join(f"{n} x {line}" for line, n in Counter(lines).most_common(6)) or "none"

    errors = (cluster.logs / "nginx-error.log").read_text(errors="replace").splitlines()
    # "2026/12/05 15:52:41 [error] 6923#6923: *8 upstream prematurely closed ...": drop the time and ids
    kinds = [re.sub(r"^\S+ \S+ (\[\w+\]) \d+#\d+: (\*\d+ )?", r"\1 ", line)[:220] for line in errors]
    replicas = "\n".join(
        f"--- replica {i} log tail:\n{server.log_tail(600)}" for i, server in enumerate(cluster.replicas) if server
    )
    return (
        f"\nkeyed errors: {counted(e[:90] for e in load.keyed_errors)}"
        f"\nkeyless errors: {counted(e[:90] for e in load.keyless_errors)}"
        f"\nnginx error log ({len(errors)} lines): {counted(kinds)}\n{replicas}"
    )


@dataclass
class Load:
    keyed_acks: list[tuple[str, str, float]] = field(default_factory=list)  # (id, sha256, when)
    keyed_errors: list[str] = field(default_factory=list)
    keyless_acks: list[tuple[str, str, str]] = field(default_factory=list)  # (id, sha256, part id)
    keyless_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(cluster, load: Load, stop: threading.Event, seed: int, keyed: bool) -> None:
    import httpx

    frames = frame_pool(count=24, seed=seed)
    i = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            frame = frames[i % len(frames)]
            i += 1
            idem = uuid.uuid4().hex if keyed else None
            part = None if keyed else f"part-{seed}-{i}"
            try:
                r = _post(client, cluster.nginx_url, frame, cluster.camera_key, idem, part)
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            else:
                outcome = None if 200 <= r.status_code < 300 else f"{r.status_code}: {r.text[:200]}"
            with load.lock:
                sha = hashlib.sha256(frame).hexdigest()
                if keyed and outcome is None:
                    load.keyed_acks.append((r.json()["id"], sha, time.monotonic()))
                elif keyed:
                    load.keyed_errors.append(outcome)
                elif outcome is None:
                    load.keyless_acks.append((r.json()["id"], sha, part))
                else:
                    load.keyless_errors.append(outcome)


def test_b_kill_9_of_a_replica_under_load_loses_no_acknowledged_frame(cluster):
    load, stop = Load(), threading.Event()
    threads = [threading.Thread(target=_client_loop, args=(cluster, load, stop, 200 + k, k < 3)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        victim = cluster.replicas[0]
        victim.signal(9)  # mid-load: frames are in flight on it
        killed_at = time.monotonic()
        victim.wait_gone(20)
        time.sleep(2.5)  # the survivor carries the line alone
        restarted = cluster.start_replica(0, model=None)
        restarted.wait_ready(60)  # it rejoins under load (its start-up sweep is not alone: it spares new files)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    rows = cluster.rows()
    images = cluster.data_dir / "images"
    lost = []
    for ack_id, sha, *_ in load.keyed_acks + load.keyless_acks:
        row = rows.get(ack_id)
        if row is None:
            lost.append(f"{ack_id}: no record")
        elif row[1] != sha:
            lost.append(f"{ack_id}: the record is another frame's")
        elif not row[0] or not (images / row[0]).is_file():
            lost.append(f"{ack_id}: image {row[0]} missing")
        elif hashlib.sha256((images / row[0]).read_bytes()).hexdigest() != sha:
            lost.append(f"{ack_id}: image {row[0]} is not the posted bytes")
    after_kill = [a for a in load.keyed_acks if killed_at < a[2]]
    parts = [r[3] for r in rows.values() if r[3] and r[3].startswith("part-")]
    twice = sorted({p for p in parts if parts.count(p) > 1})
    resent = sum(1 for line in cluster.access_log.read_text().splitlines() if "keyed=1" in line and ", " in line)
    print(
        f"\nkeyed 2xx {len(load.keyed_acks)} ({len(after_kill)} after the kill), keyed errors "
        f"{len(load.keyed_errors)}, keyless 2xx {len(load.keyless_acks)}, keyless errors "
        f"{len(load.keyless_errors)} {load.keyless_errors[:2]}, nginx resent {resent} keyed requests, lost {lost[:5]}"
    )
    why = _diagnosis(cluster, load)
    assert len(load.keyed_acks) > 50 and len(after_kill) > 20, why  # the load went on through the survivor
    assert lost == [], why  # every acknowledged frame is in the database with its image
    # a keyed frame in flight on the killed replica was resent by nginx to the survivor: no camera saw an error
    assert load.keyed_errors == [], why
    # a keyless frame is never resent by nginx (the dead replica may have stored it): no part recorded twice
    assert twice == []
    assert all(e.startswith(("502", "504")) for e in load.keyless_errors), load.keyless_errors[:3]
