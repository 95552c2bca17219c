"""Errors a user can cause and fix. The CLI prints them as one line; the server maps them to 4xx."""


class TTSIError(Exception):
    """Base class: bad input or an environment problem, reported without a traceback."""

    status = 400


class ModelError(TTSIError):
    """The model cannot be found, downloaded, imported or loaded."""

    status = 404


class ToolsError(TTSIError):
    """The tool specs are missing, malformed or not valid JSON schema."""


class RequestError(TTSIError):
    """The request itself is unusable: empty, too long, malformed messages."""


class CallError(TTSIError):
    """The model's answer cannot be read as a tool call in its own format, or breaks the schema."""

    status = 422


class TeacherError(TTSIError):
    """The TT-D teacher could not be reached or gave nothing usable."""

    status = 502


class DataError(TTSIError):
    """A benchmark file or an evaluation out dir is missing, malformed or from other settings."""


class Cancelled(Exception):
    """The caller gave up on the request (e.g. its client disconnected): the model is freed."""
