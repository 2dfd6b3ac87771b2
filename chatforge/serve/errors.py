"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, and pydantic's
validation errors turned into them (the field's dotted path as ``param``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error reply in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **self.headers} if self.status == 401 else self.headers
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def internal_error(what: str, exc: BaseException | None = None) -> ApiError:
    """A 500 that tells the client only an id; the log has the id with the exception (``exc``, or
    the one being handled). Exception text can hold paths, data or internals."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s: %s", error_id, what, exc_info=exc or True)
    return ApiError(500, f"Internal error (id {error_id}); the server log has the details under that id.",
                    code="internal_error", type="server_error")


# What a field that takes one of several types must be, for the error message (pydantic reports
# each alternative's failure separately).
UNION_FIELDS = {
    "content": 'a string, or a list of text parts {"type": "text", "text": ...} (images and audio are not supported)',
    "stop": "a string or a list of strings",
}
UNION_MEMBERS = {"str", "list[TextPart]", "list[str]"}


def validation_error(err: ValidationError) -> ApiError:
    """The first problem pydantic found, with the field's dotted path as ``param``."""
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')}).",
                        code="invalid_json")
    loc = [str(p) for p in first["loc"]]
    member = next((i for i, p in enumerate(loc) if p in UNION_MEMBERS), None)
    if member is not None:
        param = ".".join(loc[:member])
        return ApiError(400, f"Invalid value for '{param}': it must be {UNION_FIELDS[loc[member - 1]]}.", param,
                        "invalid_type")
    param = ".".join(loc) or None
    if first["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if first["type"] == "too_short" and param == "messages":
        return ApiError(400, "'messages' must contain at least one message.", param, "invalid_value")
    where = f"'{param}'" if param else "the request body"
    return ApiError(400, f"Invalid value for {where}: {first['msg']}.", param, "invalid_value")
