"""The default ports, apart from the configuration code: the console needs the API's
without importing the TOML reader and writer (a cold start pays for every module)."""

from __future__ import annotations

from typing import Final

DEFAULT_PEER_PORT: Final = 6320
DEFAULT_API_PORT: Final = 6340
