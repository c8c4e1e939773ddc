"""The request guards the runtime applies before any scoring, whatever the transport: admission
(bounded pending work, 429), idempotency keys (a retried request is answered once), API keys."""
