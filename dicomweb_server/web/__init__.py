"""The thin Starlette layer: parse the request, call a service, respond."""
