"""Settings of the example Django project (docs/embedding.md, "Django Channels").

Environment:

- ``AGENT_SERVER_ALLOW_ANONYMOUS=1`` lets visitors in without logging in.
- ``DJANGO_CHANNELS_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/0``) puts the Channels
  layer, and so the rooms, on Redis, shared by every process; without it, the in-memory
  layer (one process). ``DJANGO_CHANNELS_PREFIX`` namespaces its keys.
- ``DJANGO_DATA_DIR`` holds the user database (default ``.agent-server``).
- ``AGENT_SERVER_*`` configure agent-server itself, as for the standalone server.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",  # /admin/login/ logs a user in for the page and the socket
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "examples.django_app.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "examples.django_app.asgi.application"

# Users live here (`python -m examples.django_app.manage migrate`, then
# `createsuperuser`); anonymous visitors never touch the database.
DATA_DIR = Path(os.environ.get("DJANGO_DATA_DIR", ".agent-server"))  # beside threads.sqlite
DATA_DIR.mkdir(exist_ok=True)
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "django.sqlite3"}
}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True

_redis = os.environ.get("DJANGO_CHANNELS_REDIS_URL")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [_redis],
            "prefix": os.environ.get("DJANGO_CHANNELS_PREFIX", "asgi"),
        },
    }
    if _redis
    else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
}

# agent-server: its own settings come from AGENT_SERVER_* and agent_server.toml; the
# fields of this dict override them.
AGENT_SERVER: dict[str, object] = {}
AGENT_SERVER_ALLOW_ANONYMOUS = os.environ.get("AGENT_SERVER_ALLOW_ANONYMOUS") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"agent_server": {"handlers": ["console"], "level": "INFO"}},
}
