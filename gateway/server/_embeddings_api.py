"""OpenAI's embeddings API: `POST /v1/embeddings`.

`model` names a task of kind `embedding` (or the `x-gateway-task` header does, as for chat);
the router asks its candidates for floats, and the answer is encoded here as the client asked:
floats, or base64 of little-endian float32 (what OpenAI's SDK asks for by default, and decodes).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.errors import RoutingError
from gateway.request import MAX_EMBEDDING_INPUTS
from gateway.server._chat import (
    TASK_HEADER_MAX_LENGTH,
    gateway_headers,
    unless_disconnected,
)
from gateway.server._middleware import access_record
from gateway.server._openai_compat import ErrorResponse
from gateway.server._sse import json_bytes
from gateway.server._state import (
    CLIENT_ERRORS,
    KeyFirstRoute,
    documented_client_key,
    server_state,
)

EMBEDDINGS_PATH = "/v1/embeddings"

_ERROR = {"model": ErrorResponse}
_HEADERS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("x-gateway-task", "The task that served the request."),
        ("x-gateway-provider", "The provider whose model made every vector."),
        ("x-gateway-attempts", "How many candidates were considered."),
        ("x-gateway-attempts-detail", "provider:outcome for each candidate."),
        ("x-gateway-cost-usd", "Estimated cost in USD."),
    )
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "One embedding per input, in input order.", "headers": _HEADERS},
    400: {
        **_ERROR,
        "description": "Malformed JSON, a field outside the schema, token-id input, a task "
        "that is not of kind embedding, or `dimensions` no candidate can honour.",
    },
    **CLIENT_ERRORS,
    404: {**_ERROR, "description": "Unknown task and the policy has no `default` task."},
    413: {**_ERROR, "description": "The body is over GATEWAY_MAX_BODY_BYTES."},
    502: {**_ERROR, "description": "Every provider failed; `error.attempts` lists them."},
    504: {**_ERROR, "description": "The task's deadline_s ran out; `error.attempts` lists them."},
}

Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings: OpenAI's embeddings request. `model` names a task of kind
    `embedding`. Text only: token-id arrays are refused, as not every provider takes them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Token-id arrays are in the schema as OpenAI's: the router refuses them by name.
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | list[int]
        | list[list[int]]
    ) = Field(description="A string or a list of strings (token-id arrays are refused).")
    model: str = Field(
        min_length=1,
        max_length=256,
        description="The task to route (a task of kind embedding). The `x-gateway-task` "
        "header overrides it.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Vectors this long (models that take it, or already that long)."
    )
    user: str | None = Field(None, description="An end-user id, passed on to OpenAI.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as the client asked for it."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def add_embeddings_routes(app: FastAPI) -> None:
    """Adds the embeddings route to `app`."""

    routes = APIRouter(route_class=KeyFirstRoute)

    @routes.post(
        EMBEDDINGS_PATH,
        response_model=EmbeddingList,
        responses=_RESPONSES,
        dependencies=[Depends(documented_client_key)],
        tags=["openai"],
    )
    async def create_embeddings(
        request: Request,
        body: EmbeddingRequest,
        x_gateway_task: Annotated[
            str | None, Header(max_length=TASK_HEADER_MAX_LENGTH, description="Overrides model.")
        ] = None,
    ) -> Response:
        router = server_state(request).router
        access = access_record(request.scope)
        # Resolving the task up front turns an unknown one into a 404 before any work.
        task = router.policy.task(x_gateway_task or body.model).name
        access.task = task
        # Token-id arrays pass the schema (OpenAI's); the router refuses them by name.
        inputs: Any = body.input
        params: dict[str, Any] = {}
        if body.user is not None:
            params["user"] = body.user
        try:
            routed = await unless_disconnected(
                request.receive,
                router.embed(inputs, task=task, dimensions=body.dimensions, **params),
            )
        except RoutingError as exc:
            access.attempts = exc.attempts
            raise
        access.answered(routed)
        tokens = routed.usage.input_tokens
        payload = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encoded(v, body.encoding_format)}
                for i, v in enumerate(routed.vectors)
            ],
            "model": routed.model or routed.provider,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers = gateway_headers(
            task=task, provider=routed.provider, attempts=routed.attempts, cost=routed.cost_usd
        )
        return Response(json_bytes(payload), headers=headers, media_type="application/json")

    app.include_router(routes)
