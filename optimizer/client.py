"""A small client of the operations API (stdlib only), used by ``tsc-central override|audit``.

Errors come back as :class:`ApiError` with the HTTP status and the server's ``detail``; a
server that cannot be reached is a :class:`~edge_agent.errors.DeviceError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from edge_agent.errors import DeviceError, TscError

__all__ = ["ApiClient", "ApiError"]


class ApiError(TscError):
    """The API answered with an error status; ``body`` is its decoded JSON (or text)."""

    def __init__(self, status: int, detail: str, body: Any) -> None:
        self.status, self.detail, self.body = status, detail, body
        super().__init__(f"HTTP {status}: {detail}")


class ApiClient:
    """Calls ``/api/v1/...`` on ``url`` with a bearer ``token``."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url: must be http(s)://host[:port], got {url!r}")
        if not token:
            raise ValueError("token: empty; set TSC_CENTRAL_TOKEN or pass --token-file")
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``/api/v1{path}`` with query ``params`` (None values left out)."""
        query = urllib.parse.urlencode(
            {k: (str(v).lower() if isinstance(v, bool) else v)
             for k, v in (params or {}).items() if v is not None})
        return self._call("GET", path + (f"?{query}" if query else ""), None)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST JSON ``body`` to ``/api/v1{path}``."""
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode("utf-8", "replace")
            try:
                decoded: Any = json.loads(raw)
            except json.JSONDecodeError:
                decoded = raw
            detail = decoded.get("detail", raw) if isinstance(decoded, dict) else raw
            if not isinstance(detail, str):
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: "
                                   f"{d.get('msg')}" for d in detail if isinstance(d, dict)) \
                    if isinstance(detail, list) else json.dumps(detail)
            raise ApiError(exc.code, detail, decoded) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeviceError(f"cannot reach the operations API at {self.url}: {reason}") \
                from None
