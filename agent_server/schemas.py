"""Request bodies and JSON error responses: pydantic at the HTTP edge."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from agent_server.cursors import ID_PATTERN, BadCursor, parse_id, parse_seq
from agent_server.frames import dumps

Model = TypeVar("Model", bound=BaseModel)

THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


def _storable(value: Any) -> Any:
    """Refuse a NUL anywhere in JSON bound for PostgreSQL (its ``jsonb`` cannot hold
    ``\\u0000``: a thread's metadata with one was a 500), or an integer past 64 bits
    (which orjson cannot write)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    return value


# An id a client names (cursors.parse_id), and JSON objects the server stores.
ClientId = Annotated[
    str, AfterValidator(parse_id), WithJsonSchema({"type": "string", "pattern": ID_PATTERN})
]
StoredJSON = Annotated[dict[str, Any], AfterValidator(_storable)]


class RunConfig(BaseModel):
    """The part of a LangChain ``RunnableConfig`` a client may set."""

    model_config = ConfigDict(extra="forbid")

    configurable: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    metadata: StoredJSON = Field(default_factory=dict)  # a checkpoint's, in PostgreSQL
    recursion_limit: int = Field(25, ge=1, le=10_000)


class RunRequest(BaseModel):
    """Start a run: ``input`` is the graph's input; ``message`` is shorthand for one user turn."""

    model_config = ConfigDict(extra="forbid")

    graph: str = Field(min_length=1)
    input: Any = None
    message: str | None = None
    thread_id: str | None = Field(None, pattern=THREAD_ID_PATTERN)
    config: RunConfig = Field(default_factory=lambda: RunConfig())
    timeout: float | None = Field(None, gt=0, le=86_400, description="Seconds.")
    multitask_strategy: Literal["reject", "enqueue", "interrupt"] = "reject"
    on_disconnect: Literal["cancel", "continue"] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> RunRequest:
        has_input = "input" in self.model_fields_set
        if has_input == (self.message is not None):
            raise ValueError("give exactly one of 'input' or 'message'")
        return self

    def graph_input(self) -> Any:
        if self.message is not None:
            return {"messages": [{"role": "user", "content": self.message}]}
        return self.input

    def runnable_config(self) -> dict[str, Any]:
        config = self.config.model_dump()
        config["configurable"] = dict(config["configurable"])
        return config


class JSONResponse(Response):
    """JSON through the same encoder as frames (messages, Documents, bytes are safe)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every native error's body (what :func:`error_response` writes), as documented."""

    code: str = Field(description="Stable, machine-readable: `run_not_found`, ...")
    message: str
    errors: list[ErrorItem] | None = Field(None, description="422 only: every invalid field.")


def error_response(
    status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def validation_error_response(exc: ValidationError) -> JSONResponse:
    errors = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return error_response(422, "validation_error", f"{where}: {first['msg']}", errors)


class RequestError(Exception):
    """Raised while reading a request; routes turn it into its JSON error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message)


def path_id(request: Request, name: str) -> str:
    """An id from the path (``/runs/{run_id}``), or 422 (:func:`cursors.parse_id`)."""
    try:
        return parse_id(request.path_params[name], name)
    except BadCursor as exc:
        raise RequestError(422, "validation_error", str(exc)) from None


def _too_long(declared: str, limit: int) -> bool:
    try:
        return parse_seq(declared, "content-length") > limit
    except BadCursor:  # more than 18 digits is too long too; anything else, we count
        return declared.isascii() and declared.isdigit()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and _too_long(declared, limit):
        raise RequestError(413, "body_too_large", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or the server closed it for a body slower than its bound
        # (agent_server/http_protocol.py, which answered 408): this answer goes nowhere,
        # but ends the route quietly instead of as an "unhandled error".
        raise RequestError(400, "client_disconnected", "the body did not arrive") from None
    return b"".join(chunks)


async def read_model(request: Request, model: type[Model], limit: int) -> Model:
    """The request body as ``model``: 413 past ``limit`` bytes, 400 when it is not JSON,
    the model's ValidationError (422) when it does not fit."""
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise RequestError(400, "invalid_json", "request body is not valid JSON") from None
        raise
