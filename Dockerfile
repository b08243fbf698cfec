# The worker image: no torch. Triton runs in its own image (Dockerfile.model).
# Installed editable so alembic.ini, migrations/ and model_repo/ resolve under /app.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY stream ./stream
COPY trainer ./trainer
COPY migrations ./migrations
# /app stays root-owned and read-only to the service user. Everything a process writes goes
# under CLICKSCORE_RUN_DIR: the worker's RocksDB table files (worker-data/), the trainer's
# model store. It is a volume, so the table files outlive the container and a restart
# recovers from them instead of replaying the whole changelog.
ENV CLICKSCORE_RUN_DIR=/var/lib/clickscore \
    CLICKSCORE_MODEL_STORE=/var/lib/clickscore/models
RUN pip install --no-cache-dir -e . \
    && useradd --create-home clickscore \
    && mkdir -p /var/lib/clickscore \
    && chown clickscore:clickscore /var/lib/clickscore
USER clickscore
VOLUME ["/var/lib/clickscore"]
ENTRYPOINT ["clickscore"]
