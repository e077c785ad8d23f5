"""Protocol adapters: the same runs and frames, spoken in other clients' protocols.

Native frames are defined once (:mod:`agent_server.frames`) and served by
:mod:`agent_server.routes` (SSE) and :mod:`agent_server.ws`. Each module or package
here translates those runs for one family of clients, exposes its Starlette routes with
``routes()``, and is mounted by :mod:`agent_server.app`; none imports the native routes
(what they share lives in :mod:`agent_server.serving`):

- :mod:`~agent_server.protocols.langgraph`: LangGraph's HTTP API, for its SDKs (under
  ``AGENT_SERVER_LANGGRAPH_API_PREFIX``);
- :mod:`~agent_server.protocols.agui`: AG-UI (``POST /ag-ui/{graph}``);
- :mod:`~agent_server.protocols.aisdk`: the Vercel AI SDK's UI message stream.
"""
