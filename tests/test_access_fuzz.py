"""Property-based fuzzing of the API from its own OpenAPI document, with credentials (Hypothesis).

For every operation in ``/openapi.json``, Hypothesis draws requests from the operation's parameter and body
schemas (valid values, values that break the schema, and junk), sent with an engineer, operator, camera or no
key. Every answer must hold to the document:

* no server error (5xx);
* the status is documented (a 2xx explicitly; an error by its own entry or by ``default``);
* the body validates (jsonschema) against the schema documented for that status: the response model for a
  2xx, ``Error`` (``{"error", "message"}``) for an error; a non-JSON 2xx has a documented media type.

Deterministic (``derandomize``: the same cases on every run, no example database) and sized for CI:

    python -m pytest -q -s tests/test_access_fuzz.py        # prints the number of cases run
"""

from __future__ import annotations

import json
import string
import tempfile
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_support import PASS, REJECT, REVIEW, add_key, client_for, jpeg, png, settings_for

EXAMPLES = 40  # per operation (fewer where an operation has fewer distinct requests): well under a minute
COUNT = {"cases": 0, "by_status": {}}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tiny_onnx import tiny_card, write_tiny_model

    root = tmp_path_factory.mktemp("fuzz")
    model = write_tiny_model(root / "m1.onnx")
    with client_for(settings_for(root, model, host="0.0.0.0", queue_size=64)) as client:
        ctx = client.app.state.ctx
        ctx.registry.add_file(write_tiny_model(root / "m2.onnx", tiny_card(version="2")))
        keys = {
            "engineer": add_key(client, "engineer"),
            "operator": add_key(client, "operator"),
            "camera": add_key(client, "camera", "cam1"),
            "none": None,
        }
        seeded = client.post(
            "/v1/inspections",
            content=jpeg(REJECT),
            params={"camera_id": "cam1", "line_id": "L1", "part_id": "P-1"},
            headers={"Authorization": f"Bearer {keys['engineer']}", "Content-Type": "image/jpeg"},
        )
        assert seeded.status_code == 201
        known = {
            "inspection_id": [seeded.json()["id"]],
            "part_id": ["P-1"],
            "version": ["1", "2"],
            "model_version": ["1"],
            "camera_id": ["cam1"],
            "line_id": ["L1"],
        }
        spec = client.get("/openapi.json").json()
        yield client, keys, known, spec, model.read_bytes()
    print(f"\nfuzz: {COUNT['cases']} cases, statuses {dict(sorted(COUNT['by_status'].items()))}")


def _operations() -> list[tuple[str, str]]:
    from andon.service.app import create_app
    from andon.service.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:  # at collection time: no tmp_path yet
        spec = create_app(Settings.load(data_dir=data_dir)).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


# ---- strategies from JSON schema ------------------------------------------------------------------------------

_JUNK = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
    st.sampled_from(["", "null", "-1", "1e309", "NaN", "../", "%00", "' OR 1=1 --", "x" * 300, "é☃"]),
)


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def value_for(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` (a useful subset of JSON Schema: what FastAPI emits)."""
    schema = _resolve(schema, spec)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([value_for(s, spec, depth) for s in schema[key]])
    if "allOf" in schema:
        return value_for(schema["allOf"][0], spec, depth)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo, hi = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
        return st.integers(min_value=lo, max_value=hi)
    if kind == "number":
        lo, hi = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.sampled_from([__import__("datetime").timezone.utc])).map(
                lambda d: d.isoformat()
            )
        if schema.get("format") == "binary":
            return st.binary(max_size=64)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= schema.get("maxLength", 10**6)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 80))
    if kind == "array":
        if depth > 2:
            return st.just([])
        return st.lists(value_for(schema.get("items", {}), spec, depth + 1), max_size=3)
    if kind == "object" or "properties" in schema:
        if depth > 2:
            return st.just({})
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: value_for(v, spec, depth + 1) for k, v in props.items() if k in required},
            optional={k: value_for(v, spec, depth + 1) for k, v in props.items() if k not in required},
        )
    return st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none())


def _wire(value: Any) -> Any:
    """A drawn value as a query string value (None: leave the parameter out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_wire(v) for v in value if v is not None]
    return None if value is None else str(value)


_HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.:", max_size=40)
_IMAGES = st.sampled_from(
    [
        ("image/jpeg", jpeg(PASS)),
        ("image/jpeg", jpeg(REVIEW)),
        ("image/jpeg", jpeg(REJECT)),
        ("image/png", png(REJECT)),
        ("image/jpeg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        ("image/png", b""),
        ("application/octet-stream", b"\x00" * 64),
    ]
)


@st.composite
def requests(draw, method: str, path: str, spec: dict, keys: dict, known: dict, model_bytes: bytes):
    op = spec["paths"][path][method.lower()]
    url, query, headers = path, {}, {}
    valid = draw(st.booleans())  # half the cases keep to the schema (and known ids), half may break it
    for param in op.get("parameters", []):
        name, where, schema = param["name"], param["in"], param.get("schema", {})
        if where == "path":
            ids = st.sampled_from(known.get(name, ["x"]))
            raw = draw(ids if valid else st.one_of(ids, st.text(min_size=1, max_size=30)))
            url = url.replace("{" + name + "}", quote(str(raw), safe=""))
            continue
        if not param.get("required") and not (valid and name in known) and draw(st.integers(0, 3)) == 0:
            continue  # left out
        if valid and name in known:
            choices = [st.sampled_from(known[name])]
        else:
            choices = [value_for(schema, spec)] + ([] if valid else [_JUNK])
        value = draw(st.one_of(choices) if where == "query" else _HEADER_TEXT)
        if where == "query":
            wired = _wire(value)
            if wired is not None:
                query[name] = wired
        elif where == "header":
            headers[name] = value
    kwargs: dict[str, Any] = {}
    body = op.get("requestBody")
    if body and draw(st.integers(0, 9)) > 0:
        media = draw(st.sampled_from(sorted(body.get("content", {}))))
        content_schema = body["content"][media].get("schema", {})
        if media == "application/json":
            value = draw(st.one_of(value_for(content_schema, spec), st.recursive(st.none() | _JUNK, st.lists)))
            kwargs["content"] = json.dumps(value).encode()
            headers["Content-Type"] = media
        elif media == "multipart/form-data":
            schema = _resolve(content_schema, spec)
            files, data = [], {}
            for name, prop in schema.get("properties", {}).items():
                prop = _resolve(prop, spec)
                if prop.get("format") == "binary" or prop.get("items", {}).get("format") == "binary":
                    for _ in range(draw(st.integers(0, 2))):
                        ctype, blob = draw(_IMAGES)
                        files.append((name, ("f.jpg", blob, ctype)))
                elif (valid and name in known) or draw(st.booleans()):
                    if valid and name in known:
                        wired = _wire(draw(st.sampled_from(known[name])))
                    else:
                        wired = _wire(draw(st.one_of([value_for(prop, spec)] + ([] if valid else [_JUNK]))))
                    if isinstance(wired, str):
                        data[name] = wired
            kwargs.update(files=files or [("frame", ("f.jpg", jpeg(PASS), "image/jpeg"))], data=data)
        elif path == "/v1/models":
            kwargs["content"] = draw(st.sampled_from([model_bytes, b"", b"junk" * 16, model_bytes[:-40]]))
            headers["Content-Type"] = media
        else:
            ctype, blob = draw(_IMAGES)
            kwargs["content"] = blob
            headers["Content-Type"] = draw(st.sampled_from([ctype, media]))
    who = draw(st.sampled_from(["engineer", "engineer", "engineer", "operator", "camera", "none"]))
    if keys[who]:
        headers["Authorization"] = f"Bearer {keys[who]}"
    return method, url, query, headers, kwargs


# ---- what every answer must be ---------------------------------------------------------------------------------


def check_against_document(spec: dict, method: str, path: str, r) -> None:
    from jsonschema import Draft202012Validator

    responses = spec["paths"][path][method.lower()]["responses"]
    status = str(r.status_code)
    assert r.status_code < 500, f"server error {status}: {r.text[:300]}"
    if r.status_code < 300:
        assert status in responses, f"undocumented success {status} (documented: {sorted(responses)})"
    documented = responses.get(status) or responses.get("default")
    assert documented is not None, f"undocumented status {status} (documented: {sorted(responses)})"
    content = documented.get("content")
    media = r.headers.get("content-type", "").split(";")[0].strip()
    if not content:
        return
    if "application/json" in content and content["application/json"].get("schema"):
        assert media == "application/json", f"{status} answered {media!r}, documented application/json"
        schema = {**content["application/json"]["schema"], "components": spec["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(r.json()), key=str)
        assert not errors, f"{status} body breaks its schema: {errors[0].message[:300]} in {r.text[:300]}"
    else:
        assert media in content, f"{status} answered {media!r}, documented {sorted(content)}"


@pytest.mark.parametrize("method,path", _operations(), ids=lambda v: str(v))
def test_every_answer_holds_to_the_openapi_document(api, method, path):
    client, keys, known, spec, model_bytes = api

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(request=requests(method, path, spec, keys, known, model_bytes))
    def case(request):
        method_, url, query, headers, kwargs = request
        r = client.request(method_, url, params=query, headers=headers, follow_redirects=False, **kwargs)
        COUNT["cases"] += 1
        COUNT["by_status"][r.status_code] = COUNT["by_status"].get(r.status_code, 0) + 1
        check_against_document(spec, method, path, r)

    case()
