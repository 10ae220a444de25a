"""A real S3-compatible server for the tests (moto in server mode), and what an operator sees in its bucket.

The fixtures ``s3_endpoint`` (one server per test module) and ``no_local_aws_config`` are in tests/conftest.py.
"""

from __future__ import annotations

import logging
import uuid

CREDS = dict(s3_access_key_id="testing", s3_secret_access_key="testing", s3_region="us-east-1")


def moto_server(port: int = 0):
    """moto's S3 on 127.0.0.1 (a free port unless given), started; ``stop()`` it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def admin(endpoint: str):
    """A plain boto3 client: what an operator (or another replica) sees in the bucket."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def new_bucket(endpoint: str) -> str:
    name = f"andon-{uuid.uuid4().hex[:12]}"
    admin(endpoint).create_bucket(Bucket=name)
    return name
