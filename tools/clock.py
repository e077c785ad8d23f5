"""A tool that tells the current time in any IANA time zone."""

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_core.tools import ToolException, tool


@tool
def current_time(timezone: str = "UTC") -> str:
    """Return the current date and time in ISO 8601 format.

    Args:
        timezone: An IANA time zone name such as "UTC", "Europe/Paris" or "America/New_York".
    """
    try:
        zone = ZoneInfo(timezone)
    # A region name ("Europe") is a directory in the tz database: OSError, not NotFound.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolException(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None
    return datetime.now(zone).isoformat(timespec="seconds")
