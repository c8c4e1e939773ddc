"""The transports, thin layers over one Runtime: HTTP (FastAPI, `http.py` and `routes/`) and gRPC
(grpc.aio, `grpc_server.py`), and what is theirs alone: the HTTP body limit, the servers' start and
drain (`server.py`). The request guards they share live in `amr_sd.guards`, applied by the runtime."""
