# The worker image: no torch. Triton runs in its own image (Dockerfile.model).
# Installed editable so alembic.ini, migrations/ and model_repo/ resolve under /app.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY stream ./stream
COPY trainer ./trainer
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --create-home clickscore
USER clickscore
ENTRYPOINT ["clickscore"]
