#!/bin/sh
# Slim an installed andon service venv for its image: what the service never loads goes, nothing it loads.
#
#   deploy/slim-venv.sh /opt/andon        (deploy/Dockerfile.serve runs it; python -m bench.image_size too)
#
# 1. pip and setuptools (nothing installs at run time), the packages' own test suites, bytecode caches;
# 2. botocore's data: the JSON models of every AWS service (29 MB), less those boto3 uses here: S3 (the images
#    and the registry's files), STS, SSO and SSO-OIDC (credentials from an assumed role, a web identity or SSO);
#    the top-level files (endpoints, partitions, retry and default configuration) stay;
# 3. debug sections of the packages' own extension modules (uvloop's alone is 11 MB), with binutils' strip when
#    it is installed. The auditwheel-bundled libraries (*.libs/) are left as they are: they are patched ELF files,
#    and stripping them can break their loading.
# It ends by importing the service (and making an S3 client, which loads S3's model, where boto3 is installed),
# so a slimmed venv that would not run fails the build here.
set -eu

venv=${1:?usage: slim-venv.sh VENV}
site=$(find "$venv/lib" -maxdepth 2 -type d -name site-packages | head -n 1)
[ -d "$site" ] || { echo "slim-venv.sh: no site-packages under $venv/lib" >&2; exit 2; }

"$venv/bin/python" -m pip uninstall -q -y pip setuptools 2>/dev/null || true
find "$venv" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
rm -rf "$site/onnx/backend/test"

if [ -d "$site/botocore/data" ]; then
    find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
        ! -name s3 ! -name sts ! -name sso ! -name sso-oidc -exec rm -rf {} +
fi

if command -v strip >/dev/null 2>&1; then
    find "$site" -type f -name '*.so*' ! -path '*.libs/*' -exec strip --strip-debug {} +
else
    echo "slim-venv.sh: strip (binutils) is not installed: extension modules keep their debug sections" >&2
fi

"$venv/bin/python" - <<'CHECK'
import importlib.util

import andon.cli
import andon.service.app
import asyncua
import psycopg
import uvloop

if importlib.util.find_spec("boto3"):
    import boto3

    boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client(
        "s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
    )
CHECK
