"""Files written in one step and JSON files read with one-line errors.

atomic_write(path, text_or_bytes)          # a crash leaves the old file or the new one, never half
with staged(path, suffix=".safetensors") as temporary:
    mx.save_safetensors(str(temporary), weights)   # a writer that opens the file itself
data = read_json(path, "tools file", ToolsError)
"""

import json
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import TTSIError


@contextmanager
def staged(path, prefix=None, suffix=".tmp"):
    """A temporary path beside `path` to write to; when the block ends without an error the file is
    flushed to disk (fsync) and renamed onto `path` (os.replace: readers see the old file or the new
    one), else removed. `prefix` names it (default: `.NAME.PID.`, hidden); `suffix` is its ending (a
    writer that adds its own ending, as mx.save_safetensors adds .safetensors, needs that one)."""
    path = Path(path)
    name = f"{prefix or f'.{path.name}.{os.getpid()}.'}{secrets.token_hex(4)}{suffix}"
    temporary = path.with_name(name)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # as open() makes it: the umask's mode
    try:
        yield temporary
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path, data):
    """Write `data` (text or bytes) to `path` in one step: a temporary file in the same directory,
    fsync, os.replace."""
    with staged(path) as temporary:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            temporary.write_text(data)


def read_json(
    path,
    what,
    error=TTSIError,
    *,
    parse=json.loads,
    stdin=False,
    missing=None,
    unreadable="cannot read {what} {path}: {reason}",
    invalid="{what} {path} is not valid JSON: {reason}",
):
    """The JSON value a file holds (with `stdin`, `-` is standard input), or `error` with a one-line message.

    Each message is a template of {what}, {path}, {reason} and {error}: `missing` for a file not
    found (None: as `unreadable`), `unreadable` for one that cannot be read (None: the OSError
    itself is raised), `invalid` for text that `parse` cannot read (a ValueError; text that is not
    UTF-8 included). {reason} is the OSError's strerror, or the JSON error's message and line;
    {error} is the exception as str() gives it. What `parse` raises that is not a ValueError
    (tools.loads: too deep) passes through."""
    try:
        text = sys.stdin.read() if stdin and str(path) == "-" else Path(path).read_text()
        return parse(text)
    except OSError as problem:
        template = (missing if isinstance(problem, FileNotFoundError) else None) or unreadable
        if template is None:
            raise
        raise error(_message(template, what, path, problem)) from None
    except ValueError as problem:
        raise error(_message(invalid, what, path, problem)) from None


def _message(template, what, path, problem):
    if isinstance(problem, OSError):
        reason = problem.strerror or str(problem)
    elif isinstance(problem, json.JSONDecodeError):
        reason = f"{problem.msg} (line {problem.lineno})"
    else:
        reason = str(problem)
    return template.format(what=what, path=path, reason=reason, error=problem)
