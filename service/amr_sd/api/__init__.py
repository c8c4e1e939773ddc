"""HTTP API (FastAPI) and, later, gRPC."""
