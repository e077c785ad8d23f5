"""LangGraph's server HTTP API for its SDKs (docs/langgraph-api.md).

``routes`` assembles it and records the decisions; ``parts`` turns a run's events into
LangGraph's stream parts; ``assistants``, ``threads``, ``runs`` and ``stream`` hold the
routes by resource; ``schemas`` the request bodies; ``http`` what they share.
"""
