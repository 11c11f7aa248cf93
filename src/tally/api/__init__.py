"""tally's HTTP API (``/v1``): thin, it validates input shapes and translates the engine's
results and errors to HTTP. ``create_app(ApiContext)`` builds it; ``tally serve`` runs it."""

from tally.api.app import create_app
from tally.api.context import ApiContext, Check, Readiness

__all__ = ["ApiContext", "Check", "Readiness", "create_app"]
