# The waxflow job image. Mirrors scripts/setup.sh (cannot be built on the dev machines:
# no Docker engine there).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY waxflow waxflow
COPY dataflows dataflows
COPY operators operators
COPY connectors connectors
COPY recovery recovery
RUN pip install --no-cache-dir .
ENTRYPOINT ["waxflow"]
CMD ["--help"]
