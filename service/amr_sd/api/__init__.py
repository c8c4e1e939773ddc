"""The transports, thin layers over one Runtime: HTTP (FastAPI, `http.py` and `routes/`) and gRPC
(grpc.aio, `grpc_server.py`), with the request guards they share (admission, idempotency, auth,
body limit)."""
