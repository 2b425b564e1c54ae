"""Every Prometheus metric the gateway exports, defined once.

Labels are bounded sets only (result, state, provider, pool, source_ip, stream,
class); never an address, message id or free text. Accounting identity, per
recipient: recipients_received = delivered + bounced + expired + queue (queued and
deferred), which tests check after mixed runs.
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
