"""Every Prometheus metric the gateway exports, defined once.

Labels are bounded sets only (result, state, provider, pool, source_ip, stream,
class); never an address, message id or free text. Accounting identity, per
recipient, in one serving process: recipients_received = deliveries{delivered} +
deliveries{bounced} + deliveries{expired} + sum(recipients_suppressed) +
queue_deliveries{queued, deferred, held} (docs/operations.md, Metrics; checked by
tests/e2e/test_accounting.py). Copies finished inside a transaction are counted through
gateway/storage/tally.py, once it commits.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SMTP_CONNECTIONS = Counter(
    "gateway_smtp_connections_total",
    "SMTP client connections, by whether they were admitted.",
    ["result"],  # accepted | refused_per_ip | refused_total
)
SMTP_AUTH = Counter(
    "gateway_smtp_auth_total",
    "AUTH attempts at intake.",
    ["result"],  # success | failure | locked_out
)
SMTP_REFUSALS = Counter(
    "gateway_smtp_refusals_total",
    "Commands or messages refused at intake, by reply table entry.",
    ["result"],
)
MESSAGES_RECEIVED = Counter(
    "gateway_messages_received_total",
    "Messages accepted (250 after durable commit) for outbound delivery.",
)
RECIPIENTS_RECEIVED = Counter(
    "gateway_recipients_received_total",
    "Recipients accepted for outbound delivery (one delivery each).",
)
INBOUND_RECEIVED = Counter(
    "gateway_inbound_received_total",
    "Messages accepted for the bounce domain (DSNs, complaints, unsubscribe mail).",
)
DELIVERIES = Counter(
    "gateway_deliveries_total",
    "Delivery attempts, by outcome.",
    ["result"],  # delivered | deferred | bounced | expired
)
DELIVERY_SECONDS = Histogram(
    "gateway_delivery_attempt_seconds",
    "Time of one SMTP transaction (MAIL FROM to the reply after DATA) on an open connection.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
QUEUE_DELIVERIES = Gauge(
    "gateway_queue_deliveries",
    "Deliveries in the database, by state (refreshed every few seconds).",
    ["state"],
)
OLDEST_QUEUED_SECONDS = Gauge(
    "gateway_queue_oldest_due_seconds",
    "How long the most overdue pending delivery has been due.",
)
STORAGE_COMMITS = Counter(
    "gateway_storage_commits_total",
    "Group-commit transactions, by result.",
    ["result"],  # ok | failed
)
STORAGE_BATCH_SIZE = Histogram(
    "gateway_storage_commit_batch_size",
    "Writes shared by one commit (group commit effectiveness).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total",
    "Policy reload attempts, by result.",
    ["result"],  # success | failure
)

RECIPIENTS_SUPPRESSED = Counter(
    "gateway_recipients_suppressed_total",
    "Recipients received but never to be sent, by consent or suppression reason (part of "
    "received = delivered + bounced + suppressed + expired + queued)",
    ["reason"],
)
RECIPIENTS_REFUSED = Counter(
    "gateway_recipients_refused_total",
    "Recipients refused with a 5xx by the consent and suppression rules (never received)",
    ["reason"],
)

# -- per-provider shaping (gateway/shaping/, gateway/delivery/agent.py) --------------------------
DELIVERIES_BY_PROVIDER = Counter(
    "gateway_deliveries_by_provider_total",
    "Delivery attempts by receiving provider, pool and source IP.",
    ["provider", "pool", "source_ip", "result"],  # result: delivered | transient | permanent | postponed
)
THROTTLE_WAITS = Counter(
    "gateway_throttle_waits_total",
    "Times a message waited for its provider's rate (token bucket) before being sent.",
    ["provider"],
)
SUSPENSIONS_ACTIVE = Gauge(
    "gateway_suspensions_active",
    "1 while a source IP is suspended for a provider by an automation rule.",
    ["provider", "source_ip"],
)
WARMUP_DAY = Gauge(
    "gateway_warmup_day",
    "The warm-up schedule day a source IP is on for a provider (after pauses and step-backs).",
    ["source_ip", "provider"],
)
WARMUP_CAP = Gauge(
    "gateway_warmup_cap",
    "Today's warm-up cap for a source IP and provider (-1 = unlimited).",
    ["source_ip", "provider"],
)
WARMUP_DECISIONS = Counter(
    "gateway_warmup_decisions_total",
    "Warm-up schedules paused or stepped back because a provider deferred too much.",
    ["source_ip", "provider", "decision"],  # pause | step_back
)
PROVIDER_CONNECTIONS = Gauge(
    "gateway_provider_connections",
    "Open outbound connections by provider and source IP.",
    ["provider", "source_ip"],
)

# -- bounces, complaints, webhooks (gateway/feedback/) -------------------------------------------
BOUNCES = Counter(
    "gateway_bounces_total",
    "Bounces read: 5xx replies and final failures at delivery, and failed recipients of DSNs.",
    ["class", "severity"],  # class: the bounce classes of policies/bounces.toml; hard | soft
)
COMPLAINTS = Counter(
    "gateway_complaints_total",
    "Trusted complaint (ARF) reports applied, by receiving provider.",
    ["provider"],  # "unknown" until the report can be tied to a provider profile
)
INBOUND_REPORTS = Counter(
    "gateway_inbound_reports_total",
    "Mail to the bounce domain after processing, by report kind and what became of it.",
    ["kind", "result"],  # kind: dsn | arf | auto-reply | not-bounce | unsubscribe; result: the inbound state
)
WEBHOOK_BACKLOG = Gauge(
    "gateway_webhook_backlog",
    "Events waiting in the webhook outbox (all webhooks).",
)
WEBHOOK_DELIVERIES = Counter(
    "gateway_webhook_deliveries_total",
    "Webhook POSTs, by result.",
    ["result"],  # ok | failed
)
FEEDBACK_UNAPPLIED = Gauge(
    "gateway_feedback_unapplied",
    "Bounce facts whose bookkeeping failed with their outcome, waiting to be applied again.",
)
WEBHOOK_PARKED = Counter(
    "gateway_webhook_parked_total",
    "Webhook events given up after too many attempts or too long (state parked in webhook_outbox).",
    ["webhook"],
)
WEBHOOK_SKIPPED_IDS = Counter(
    "gateway_webhook_skipped_event_ids_total",
    "Event ids the webhook feed moved past after the grace period without ever seeing them.",
    ["webhook"],
)
# -- reputation circuit breakers (issue 9): docs/reputation.md ---------------------------------
CAMPAIGNS_PAUSED = Gauge(
    "gateway_campaigns_paused",
    "Campaigns paused now (by a circuit breaker or an operator); their mail is held.",
)
BREAKER_TRIPS = Counter(
    "gateway_breaker_trips_total",
    "Campaigns paused by a circuit breaker, by the key that tripped it.",
    ["stream", "provider", "reason"],  # provider "all": the whole campaign; reason: hard-bounce | complaint
)
BREAKER_WARNINGS = Counter(
    "gateway_breaker_warnings_total",
    "Circuit-breaker warnings (once per campaign, key and reason per window).",
    ["stream", "provider", "reason"],
)
REPUTATION_RATE = Gauge(
    "gateway_reputation_rate",
    "Rolling hard-bounce or complaint rate over the breaker window, across campaigns.",
    ["stream", "provider", "kind"],  # kind: hard-bounce | complaint; provider "all": the whole stream
)
