"""A FastAPI service with agent-server inside it (docs/embedding.md).

From the repository root (its agent_server.toml, graphs/ and tools/ are used)::

    uvicorn examples.fastapi_app.main:app

- ``/agents/...`` is all of agent-server, mounted: the playground at ``/agents/``, the
  WebSocket at ``/agents/ws``, ``/agents/runs/stream``, the AG-UI and AI SDK adapters.
- ``POST /ask`` is this service's own route: it streams a run through the public API,
  with the user this service's auth resolved as the run's owner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.responses import Response

import agent_server
from agent_server.auth import load_verifier

router = APIRouter()
bearer = HTTPBearer(auto_error=False)


class Question(BaseModel):
    question: str = Field(min_length=1, max_length=10_000)
    thread_id: str | None = None  # continue a conversation


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str | None:
    """Your service's own auth goes here. This one accepts the tokens agent-server
    accepts (``AGENT_SERVER_AUTH``), so that this route and the mounted ones know the
    same users; with authentication off, everyone is anonymous (``None``)."""
    verify = request.app.state.verify
    if verify is None:
        return None
    user = await verify(credentials.credentials) if credentials else None
    if user is None:
        raise HTTPException(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
    return str(user.id)


@router.post("/ask")
async def ask(
    body: Question,
    user: Annotated[str | None, Depends(current_user)],
    state: Annotated[agent_server.AppState, Depends(agent_server.get_state)],
) -> Response:
    """The agent's answer as Server-Sent Events: the frames of ``/agents/runs/stream``."""
    run = await agent_server.start_run(
        state,
        "agent",
        body.question,
        thread_id=body.thread_id,
        owner=user,
        multitask_strategy="enqueue",
    )
    return agent_server.sse_response(run)


def create(settings: agent_server.Settings | None = None) -> FastAPI:
    settings = settings or agent_server.Settings()
    agents = agent_server.create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Starlette does not run a mounted app's lifespan: start and stop agent-server here.
        async with agent_server.lifespan(agents) as state:
            yield {"agent_server": state}

    app = FastAPI(
        title="A FastAPI service with agent-server",
        lifespan=lifespan,
        exception_handlers=agent_server.error_handlers,
    )
    app.state.verify = load_verifier(settings)
    app.include_router(router)
    app.mount("/agents", agents)
    return app


app = create()
