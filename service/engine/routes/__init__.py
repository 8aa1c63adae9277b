"""The engine's HTTP routes, one ``APIRouter`` per concern; ``server.build_app`` includes them all.

``generate``: /generate. ``weights``: updates, staging, the update group and session, versions.
``control``: pause, continue, abort, flush_cache. ``health``: model/server info, health, metrics.
"""

from . import control, generate, health, weights

ROUTERS = (generate.router, weights.router, control.router, health.router)
