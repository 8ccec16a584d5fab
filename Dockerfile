# syntax=docker/dockerfile:1
# The interest-stream worker image (also runs `interest train` and `interest produce`).
#   docker build -t interest-stream:0.1.0 .
#   docker run --rm -e INTEREST_KAFKA_BOOTSTRAP=kafka:9092 -p 6066:6066 interest-stream:0.1.0

# ---- builder: wheels for the project and every dependency (build tools live here only)
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: slim, no compilers, non-root
FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INTEREST_WEB_HOST=0.0.0.0 \
    INTEREST_WEB_PORT=6066 \
    INTEREST_DATA_DIR=/var/lib/interest
RUN groupadd --system --gid 10001 interest \
    && useradd --system --uid 10001 --gid interest --home-dir /home/interest --create-home \
       --shell /usr/sbin/nologin interest \
    && mkdir -p /var/lib/interest /models/interest \
    && chown -R interest:interest /var/lib/interest /models
# (named volumes mounted on /var/lib/interest and /models start with this ownership)
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels interest-stream
USER interest:interest
WORKDIR /home/interest
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('INTEREST_WEB_PORT', '6066'), timeout=3)"]
ENTRYPOINT ["interest"]
CMD ["worker"]
