"""Errors in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

from typing import Any

__all__ = ["APIError", "bad_request", "error_body"]


class APIError(Exception):
    """An error answered to the client: HTTP ``status``, OpenAI error ``type``, the request field (``param``) it is
    about and a short machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """A 400 naming the request field ``param``."""
    return APIError(400, message, param=param, code=code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
