"""Web and framework integrations: the ASGI middleware, FastAPI relays.

Floor: ``integrations``, the top of the library below the public face; it may import
everything under it (``providers``, ``_runtime``, the engine) and nothing imports it but the
application (and ``streamguard`` itself).
"""
