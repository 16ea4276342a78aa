# One image for every Airflow component of the distributed stack (docker-compose.yaml):
# Python 3.11 with exactly the pinned requirements (Airflow 3.3.2, the Celery provider,
# boto3, ...), the DAGs, the handover library, its configuration and the GX suites.
# The Data Docs pages' scripts, styles and fonts, pinned by docs-assets/package-lock.json
# (the plugin serves them from the UI's origin instead of public CDNs).
FROM node:20-bookworm-slim AS docs-assets
WORKDIR /assets
COPY docs-assets/package.json docs-assets/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow

RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow

COPY requirements.txt /tmp/requirements.txt
RUN python -m pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

WORKDIR /opt/handover
COPY --chown=airflow:0 pyproject.toml ./
COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 expectations/ expectations/
COPY --chown=airflow:0 --from=docs-assets /assets/node_modules docs-assets/node_modules
COPY --chown=airflow:0 docker/airflow-init.sh /usr/local/bin/handover-init

# .state holds what a worker builds locally before it goes to the lake (Data Docs).
RUN mkdir -p /opt/handover/.state /opt/handover/source /opt/airflow/logs \
    && chown -R airflow:0 /opt/handover /opt/airflow \
    && chmod 0755 /usr/local/bin/handover-init

ENV PYTHONPATH=/opt/handover/include \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/handover/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/handover/plugins

USER airflow
ENTRYPOINT ["/usr/bin/tini", "--", "airflow"]
CMD ["version"]
