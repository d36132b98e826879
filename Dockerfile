# The waxflow job image: Python and waxflow only (no JDK, no Maven, no broker: the job talks
# to an existing Kafka cluster). Two stages: the first builds the wheel from the source tree,
# the second installs that wheel and its pinned dependencies into a slim Python image and
# runs as a non-root user.
#
#   docker build -t waxflow .
#   docker run --rm -v "$PWD/flows:/flows:ro" -e WAXFLOW_BOOTSTRAP=kafka:9092 -p 9100:9100 \
#       waxflow run /flows/orders.yaml                  # metrics/health on :9100
#   docker run --rm -v "$PWD/flows:/flows:ro" waxflow validate /flows/orders.yaml
#   docker run --rm -e WAXFLOW_BOOTSTRAP=kafka:9092 waxflow executions list
#
# Flows are mounted at /flows (or copied in by a derived image: `FROM waxflow` +
# `COPY flows/ /flows/`). No Docker engine runs on the development machines:
# tests/unit/test_deploy.py checks this file and reproduces its install steps (wheel build,
# `pip install` of the wheel into a fresh venv, the entry point) outside a container.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# the package's subpackages are symlinks (waxflow/dataflows -> ../dataflows, ...): copy the
# folders they point at beside it
COPY waxflow waxflow
COPY dataflows dataflows
COPY operators operators
COPY connectors connectors
COPY recovery recovery
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WAXFLOW_HOME=/var/lib/waxflow \
    WAXFLOW_STORAGE=/var/lib/waxflow/storage \
    WAXFLOW_METRICS_PORT=9100 \
    WAXFLOW_LOG_FORMAT=json
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/waxflow --create-home \
       waxflow \
    && mkdir -p /flows \
    && waxflow --help > /dev/null
USER 10001:10001
WORKDIR /var/lib/waxflow
# /metrics, /healthz, /readyz of `waxflow run` ($WAXFLOW_METRICS_PORT)
EXPOSE 9100
ENTRYPOINT ["waxflow"]
CMD ["--help"]
