# smtp-gateway container image.
#
# The example config listens on 127.0.0.1 only (SMTP 2525, admin 8025, public 8080),
# which is unreachable from outside a container. Mount an overlay that listens on
# 0.0.0.0 and add it after the example config, e.g. /etc/gateway/local.toml:
#
#   [smtp]
#   listen = ["0.0.0.0:2525"]
#   [http]
#   admin_listen = "0.0.0.0:8025"
#   public_listen = "0.0.0.0:8080"
#
# The database schema must exist before `serve` starts (it refuses otherwise):
#
#   docker run --rm -v gw-var:/app/var IMAGE db upgrade -c /app/config.example.toml
#   docker run -d -v gw-var:/app/var -v ./local.toml:/etc/gateway/local.toml:ro \
#       -p 2525:2525 -p 8080:8080 IMAGE \
#       serve -c /app/config.example.toml -c /etc/gateway/local.toml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY policies/ policies/
COPY config.example.toml ./
RUN pip install --no-cache-dir . \
    && rm -rf build gateway smtp_gateway.egg-info \
    && mkdir -p /app/var \
    && chown gateway:gateway /app/var

USER gateway
# SQLite database (sqlite:///var/gateway.db is relative to WORKDIR /app).
VOLUME /app/var
# 2525 SMTP (STARTTLS), 465 implicit TLS, 8025 admin (/metrics, /healthz), 8080 public pages.
EXPOSE 2525 465 8025 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["gateway"]
CMD ["serve", "-c", "/app/config.example.toml"]
