from django.contrib import admin
from django.urls import path

from agent_server.contrib.django import stream_run
from examples.django_app.views import index

urlpatterns = [
    path("", index),
    # The query parameters of GET /runs/stream; EventSource resumes with Last-Event-ID.
    path("sse/agent/", stream_run),
    path("admin/", admin.site.urls),
]
