"""``andon serve``'s logging: a malformed upload is answered (400), not also logged by python-multipart."""

from __future__ import annotations

import logging
import logging.config

import pytest
from python_multipart.multipart import MultipartParseError, MultipartParser

from andon.cli.serve import _log_config


def test_garbage_multipart_writes_no_log_line_but_the_service_log_stays(capfd):
    logging.config.dictConfig(_log_config("info"))
    try:
        parser = MultipartParser(b"boundary", callbacks={})
        with pytest.raises(MultipartParseError):
            parser.write(b"--xx garbage that is no boundary\r\n")  # what the soak's bad-multipart senders post
        logging.getLogger("andon.service").warning("storage failed: the service's own warning")
        err = capfd.readouterr().err
        assert "Expected boundary character" not in err  # before: one WARNING line per malformed request
        assert "storage failed: the service's own warning" in err
    finally:
        for name in ("andon", "python_multipart", "uvicorn", "uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
