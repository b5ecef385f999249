"""`/v1/files`: multipart upload, list, retrieve, content and delete, with OpenAI's shapes.

Uploaded files are kept on disk under the sandbox's work directory (`fine_tuning.work_dir`, or a
temporary directory removed when the sandbox is garbage-collected or the process exits), because
fine-tuning jobs backed by a local model train on them with the local LoRA trainer.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rmft_api.sandbox.replies import error_reply

if TYPE_CHECKING:
    from rmft_api.sandbox.state import SandboxState

# OpenAI's FilePurpose values (SDK 3.x).
PURPOSES = frozenset(
    {"assistants", "batch", "fine-tune", "vision", "user_data", "evals", "fine-tune-results"}
)
DEFAULT_LIST_LIMIT = 10_000  # OpenAI's files list default (and maximum)
_MULTIPART_SLACK = 64 * 1024  # a body's multipart headers around the file itself


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Files by id, in upload order; contents on disk."""

    def __init__(self, work_dir: str | Path | None = None) -> None:
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.files: dict[str, StoredFile] = {}

    @property
    def root(self) -> Path:
        """The sandbox's work directory (created on first use)."""
        if self._work_dir is None:
            # Removed by its finalizer when the store goes away or the process exits.
            self._tmp = tempfile.TemporaryDirectory(prefix="rmft-sandbox-")
            self._work_dir = Path(self._tmp.name)
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir

    def add(
        self, filename: str, purpose: str, data: bytes, *, file_id: str | None = None
    ) -> StoredFile:
        """Store a file; `file_id` for services that announce the id before the upload."""
        file_id = file_id or f"file-{uuid.uuid4().hex[:24]}"
        path = self.root / "files" / file_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stored = StoredFile(
            id=file_id,
            filename=filename,
            purpose=purpose,
            bytes=len(data),
            created_at=int(time.time()),
            path=path,
        )
        self.files[file_id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self.files.get(file_id)

    def delete(self, file_id: str) -> bool:
        stored = self.files.pop(file_id, None)
        if stored is None:
            return False
        stored.path.unlink(missing_ok=True)
        return True


def missing_key_reply(request: Request) -> Response | None:
    """401 like OpenAI's when the request carries no bearer key; None when it does."""
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer ") and auth.removeprefix("Bearer ").strip():
        return None
    return error_reply(
        401,
        "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        type_="invalid_request_error",
    )


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return error_reply(400, message, type_="invalid_request_error", param=param, code=code)


def too_large(size: int, limit: int) -> Response:
    return error_reply(
        413,
        f"File too large: {size:,} bytes; the limit is {limit:,} bytes",
        type_="invalid_request_error",
        param="file",
        code="file_too_large",
    )


def not_found(kind: str, object_id: str) -> Response:
    return error_reply(
        404, f"No such {kind} object: {object_id}", type_="invalid_request_error", param="id"
    )


def page(
    items: list[dict[str, Any]], *, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool] | None:
    """Cursor pagination over `items` (already in list order): the ones after the object with id
    `after`, at most `limit`, and whether more follow. None when `after` is not among them."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            return None
        start = ids.index(after) + 1
    chunk = items[start : start + limit]
    return chunk, start + limit < len(items)


def list_body(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def query_limit(request: Request, default: int, *, maximum: int) -> int | Response:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        return invalid(f"limit must be an integer, got {raw!r}", param="limit")
    if not 1 <= limit <= maximum:
        return invalid(f"limit must be between 1 and {maximum}", param="limit")
    return limit


def routes(state: SandboxState) -> list[Route]:
    store = state.files

    async def upload(request: Request) -> Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        limit = state.settings.fine_tuning.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
            return too_large(int(declared), limit)  # refused before the body is read
        try:
            form = await request.form()
        except (HTTPException, MultiPartException) as e:
            # Starlette turns a malformed body into a 400 HTTPException (MultiPartException
            # outside an app); another content type simply yields an empty form.
            return invalid(f"could not parse the multipart body: {e}")
        try:
            purpose = form.get("purpose")
            upload_file = form.get("file")
            if not isinstance(purpose, str) or purpose not in PURPOSES:
                allowed = ", ".join(sorted(PURPOSES))
                return invalid(f"'purpose' must be one of: {allowed}", param="purpose")
            if not isinstance(upload_file, UploadFile):
                return invalid("'file' is a required property", param="file")
            data = await upload_file.read()
            filename = upload_file.filename or "upload"
        finally:
            await form.close()
        if len(data) > limit:  # a body sent without its length
            return too_large(len(data), limit)
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            return invalid("Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        return JSONResponse(store.add(filename, purpose, data).as_json())

    async def list_files(request: Request) -> Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        limit = query_limit(request, DEFAULT_LIST_LIMIT, maximum=DEFAULT_LIST_LIMIT)
        if isinstance(limit, Response):
            return limit
        purpose = request.query_params.get("purpose")
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            return invalid("order must be 'asc' or 'desc'", param="order")
        items = [f.as_json() for f in store.files.values() if purpose in (None, f.purpose)]
        if order == "desc":
            items.reverse()
        paged = page(items, after=request.query_params.get("after"), limit=limit)
        if paged is None:
            return invalid("'after' is not a file id of this list", param="after")
        data, has_more = paged
        return JSONResponse(list_body(data, has_more=has_more))

    def lookup(request: Request) -> StoredFile | Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        file_id = str(request.path_params["file_id"])
        stored = store.get(file_id)
        return stored if stored is not None else not_found("File", file_id)

    async def retrieve(request: Request) -> Response:
        found = lookup(request)
        return found if isinstance(found, Response) else JSONResponse(found.as_json())

    async def content(request: Request) -> Response:
        found = lookup(request)
        if isinstance(found, Response):
            return found
        return Response(found.path.read_bytes(), media_type="application/octet-stream")

    async def delete(request: Request) -> Response:
        found = lookup(request)
        if isinstance(found, Response):
            return found
        store.delete(found.id)
        return JSONResponse({"id": found.id, "object": "file", "deleted": True})

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
    ]
