"""The Prometheus metrics every worker exports (CONTRACT section 6).

Defined once here so that the worker, the tests and the Grafana dashboard agree on names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # *_created series double the scrape size and no panel uses them

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

EVENTS = Counter("interest_events", "Events applied to user state", ["type"], registry=REGISTRY)
REJECTED = Counter(
    "interest_events_rejected",
    "Events sent to the dead-letter topic",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "interest_events_duplicate", "Events skipped as already applied", registry=REGISTRY
)
EVENT_TO_RECOMMENDATION = Histogram(
    "interest_event_to_recommendation_seconds",
    "From the newest included event's Kafka timestamp to the recommendation's publication",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESCORE_BATCH_SIZE = Histogram(
    "interest_rescore_batch_size",
    "Users per rescoring batch",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
RESCORE_SECONDS = Histogram(
    "interest_rescore_seconds",
    "Scoring time of one rescoring batch",
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "interest_recommendations_published",
    "Recommendation messages published",
    registry=REGISTRY,
)
USERS = Gauge("interest_users", "Users held by this worker", registry=REGISTRY)
MODEL_INFO = Gauge(
    "interest_model_info", "Set to 1 for the loaded model version", ["version"], registry=REGISTRY
)
SCORER_ERRORS = Counter(
    "interest_scorer_errors", "Scorer calls that failed or timed out", registry=REGISTRY
)
DIRTY_USERS = Gauge(
    "interest_dirty_users", "Users waiting to be rescored on this worker", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "interest_consumer_lag",
    "Records between the committed position and the end of each owned events partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
STATE_BYTES = Histogram(
    "interest_state_bytes",
    "Serialised size of user states written",
    buckets=(128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    registry=REGISTRY,
)
TRENDING_STALENESS = Gauge(
    "interest_trending_staleness_seconds",
    "Delay from a trending snapshot's publication to this worker's view of it (last received)",
    registry=REGISTRY,
)
TRENDING_CATEGORIES = Gauge(
    "interest_trending_categories", "Categories in this worker's trending view", registry=REGISTRY
)
