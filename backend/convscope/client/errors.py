"""`ApiError`: the one exception the client raises for an answer the server refused."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """A 4xx/5xx answer, or a job that failed: the HTTP status and the server's `detail`.

    `errors` holds FastAPI's per-field list for a 422; `response` the raw answer (None for a failed job,
    whose status and detail come from the job's `error`); `job` the job, when one failed.
    """

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        response: httpx.Response | None = None,
        job: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.errors = errors
        self.response = response
        self.job = job

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read `{"detail": ...}` from the answer; its text (or reason phrase) when it is not that JSON."""
        detail: Any = None
        errors = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            errors = body.get("errors") if isinstance(body.get("errors"), list) else None
        if detail is None:
            detail = response.text.strip()[:500] or response.reason_phrase
        return cls(response.status_code, str(detail), errors=errors, response=response)
