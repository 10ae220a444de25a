"""Errors of the line sinks. They never reach an HTTP client: the dispatcher logs them and retries."""

from __future__ import annotations

from andon.errors import AndonError


class SinkUnavailableError(AndonError):
    """A sink (the broker, the PLC) could not take a verdict now: not reachable, no acknowledgement in time,
    or an exception answer. The dispatcher keeps the verdict in the outbox and tries again."""

    code = "sink_unavailable"
    http_status = 503


class LineValueError(AndonError):
    """A value that must not go to the line as it is (a decision with no result code, a number that does not
    fit its register). Refused before anything is written."""

    code = "bad_line_value"
    http_status = 422
