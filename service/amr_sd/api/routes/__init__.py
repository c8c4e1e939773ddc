"""The HTTP routes, one module per resource; each only translates to and from the runtime."""
