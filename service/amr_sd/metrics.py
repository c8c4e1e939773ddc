"""Prometheus metrics, `amr_sd_*`. One registry per app, so tests can build several apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from amr_client.schemas import BatchStats

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_RATE_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
# Clipped CIG lies in [-kappa, kappa], kappa 5 by default; the taus sit at +-1.
_CIG_BUCKETS = (-5, -3, -2, -1.5, -1, -0.5, -0.2, 0, 0.2, 0.5, 1, 1.5, 2, 3, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("amr_sd_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram("amr_sd_request_duration_seconds",
                                          "HTTP request latency.", ["route"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("amr_sd_requests_in_flight", "Requests being served.", registry=r)
        self.tokens_scored = Counter("amr_sd_tokens_scored", "Response tokens teacher-forced.",
                                     registry=r)
        self.reflections_generated = Counter("amr_sd_reflections_generated",
                                             "Reflection generations run (retries included).",
                                             registry=r)
        self.reflections_cached = Counter("amr_sd_reflections_cached",
                                          "Reflections served from the cache.", registry=r)
        self.scores_cached = Counter("amr_sd_scores_cached",
                                     "Scoring passes read from the score cache.", registry=r)
        self.reflections_rejected = Counter("amr_sd_reflections_rejected",
                                            "Reflections finally rejected, by reason.", ["reason"],
                                            registry=r)
        self.gate_rate = Histogram("amr_sd_gate_rate", "Share of reflected tokens gated, per request.",
                                   buckets=_RATE_BUCKETS, registry=r)
        self.cig_mean = Histogram("amr_sd_cig_mean", "Mean clipped CIG per request (nats).",
                                  buckets=(-2, -1, -0.5, -0.2, -0.1, 0, 0.1, 0.2, 0.5, 1, 2),
                                  registry=r)
        # Credit health by branch: a gate that opens only on hints (or only on critiques), or a
        # CIG tail that drifts from the taus, shows here first.
        self.branch_gate_rate = Histogram(
            "amr_sd_branch_gate_rate",
            "Share of a branch's gateable tokens gated, per request (positive: hints, negative: "
            "critiques).", ["branch"], buckets=_RATE_BUCKETS, registry=r)
        self.branch_cig_quantile = Histogram(
            "amr_sd_branch_cig_quantile",
            "Per request, a quantile of the clipped CIG on a branch's gateable tokens (nats).",
            ["branch", "quantile"], buckets=_CIG_BUCKETS, registry=r)
        self.engine_seconds = Histogram("amr_sd_engine_seconds", "Engine time per phase.",
                                        ["phase"], buckets=_LATENCY_BUCKETS, registry=r)
        # Reliability (docs/server.md "Running it safely").
        self.admission_rejected = Counter("amr_sd_admission_rejected",
                                          "Score requests refused before engine work, by reason.",
                                          ["reason"], registry=r)
        self.pending_sequences = Gauge("amr_sd_pending_sequences",
                                       "Rollouts admitted and not yet answered.", registry=r)
        self.pending_tokens = Gauge("amr_sd_pending_tokens",
                                    "Response tokens admitted and not yet answered.", registry=r)
        self.deadline_exceeded = Counter("amr_sd_deadline_exceeded",
                                         "Requests whose deadline passed (504, engine work aborted).",
                                         registry=r)
        self.client_disconnects = Counter("amr_sd_client_disconnects",
                                          "Requests whose client left before the answer (work aborted).",
                                          registry=r)
        self.idempotent_replays = Counter("amr_sd_idempotent_replays",
                                          "Answers replayed for a repeated Idempotency-Key.", registry=r)
        self.cache_errors = Counter("amr_sd_cache_errors",
                                    "Redis operations that failed (scoring went on uncached).",
                                    registry=r)
        self.engine_unfinished = Gauge("amr_sd_engine_unfinished_requests",
                                       "Requests the engine holds that are neither finished nor aborted.",
                                       registry=r)
        # Policy sync (docs/policy-sync.md).
        self.policy_reloads = Counter("amr_sd_policy_reloads",
                                      "POST /v1/policy by outcome: loaded, unchanged, rejected, failed.",
                                      ["outcome"], registry=r)
        self.policy_reload_seconds = Histogram("amr_sd_policy_reload_seconds",
                                               "Time to load new full weights into the engine.",
                                               buckets=_LATENCY_BUCKETS, registry=r)

    def observe_scoring(self, stats: BatchStats) -> None:
        self.tokens_scored.inc(stats.tokens_scored)
        self.reflections_generated.inc(stats.reflections_generated)
        self.reflections_cached.inc(stats.reflections_cached)
        self.scores_cached.inc(stats.scores_cached)
        for reason, n in stats.reject_reasons.items():
            self.reflections_rejected.labels(reason=reason).inc(n)
        if stats.reflected_tokens:
            self.gate_rate.observe(stats.gate_rate)
            self.cig_mean.observe(stats.cig_mean)
        for name in ("positive", "negative"):
            branch = getattr(stats, name)
            if branch.reflected_tokens:
                self.branch_gate_rate.labels(branch=name).observe(branch.gate_rate)
                for quantile in ("p01", "p05", "p50", "p95", "p99"):
                    self.branch_cig_quantile.labels(branch=name, quantile=quantile).observe(
                        getattr(branch, f"cig_{quantile}"))
        if stats.reflections_requested:
            self.engine_seconds.labels(phase="reflect").observe(stats.timings.reflect_s)
        if stats.tokens_scored:
            self.engine_seconds.labels(phase="score").observe(stats.timings.score_s)
