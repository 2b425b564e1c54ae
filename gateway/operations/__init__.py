"""Operator views that draw on several parts at once (queue, shaping, feedback): what
`gateway status` and the admin API's GET /status report."""
