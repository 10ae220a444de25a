"""API routers, one per resource; ``andon.service.app`` includes them."""
