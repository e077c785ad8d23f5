from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """One page: a conversation over the WebSocket at /ws/agent/ (or SSE at /sse/agent/)."""
    return render(request, "agent.html")
