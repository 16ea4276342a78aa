"""docker-compose.yaml stays honest without a container engine.

No engine runs on the development machine, so the compose file is checked here: it
parses, it has the services of Airflow's official layout plus MinIO, every variable it
sets is one that something really reads (the handover library, Airflow's own
configuration, or the image or init script it is given to), and every ${VAR} it uses is
documented in .env.example. The same components run as processes in
tests/e2e/test_celery.py.
"""

from __future__ import annotations

import importlib
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
# Variables read by a third-party image, by service image prefix.
IMAGE_VARS = {"postgres": ("POSTGRES_",), "minio/minio": ("MINIO_",)}
VAR_USE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}")


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@cache
def code_text() -> str:
    """The library and the DAGs: where the handover variables must be read."""
    files = sorted((ROOT / "include").rglob("*.py")) + sorted((ROOT / "dags").glob("*.py"))
    return "\n".join(f.read_text() for f in files)


@cache
def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@cache
def airflow_options() -> frozenset[tuple[str, str]]:
    """Every (section, option) of Airflow core and the installed providers."""
    import airflow
    import airflow.providers

    spec = yaml.safe_load(
        (Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text()
    )
    opts = {(s, k) for s, sec in spec.items() for k in (sec.get("options") or {})}
    for base in airflow.providers.__path__:
        for info_file in Path(base).rglob("get_provider_info.py"):
            rel = info_file.relative_to(base).with_suffix("")
            module = "airflow.providers." + ".".join(rel.parts)
            try:
                info = importlib.import_module(module).get_provider_info()
            except ImportError:
                continue
            for s, sec in (info.get("config") or {}).items():
                opts |= {(s, k) for k in (sec.get("options") or {})}
    return frozenset(opts)


def service_env(name: str) -> dict[str, str]:
    env = compose()["services"][name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def substitute(value: str) -> str:
    """${VAR} replaced by its .env.example value, as compose would with that .env."""
    return VAR_USE.sub(lambda m: env_example()[m.group(1)].strip("'\""), value)


def test_compose_parses_with_the_official_layout():
    services = compose()["services"]
    for name in ("postgres", "redis", "minio", *AIRFLOW_SERVICES):
        assert name in services, name
    worker = services["airflow-worker"]
    assert worker["command"] == "celery worker"
    # Scalable with --scale: no fixed container name or hostname.
    assert "container_name" not in worker and "hostname" not in worker
    assert not any("container_name" in s for s in services.values())
    for name in AIRFLOW_SERVICES:
        assert services[name]["image"] == services["airflow-worker"]["image"], name
    for name in AIRFLOW_SERVICES[1:]:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-triggerer"]["command"] == "triggerer"


@pytest.mark.parametrize("service", ["postgres", "redis", "minio", *AIRFLOW_SERVICES])
def test_every_variable_set_is_read_by_something(service):
    spec = compose()["services"][service]
    image = spec.get("image", "")
    for name in service_env(service):
        if name.startswith("AIRFLOW__"):
            section, _, option = name[len("AIRFLOW__") :].lower().partition("__")
            assert (section, option) in airflow_options(), f"{service}: {name} is no Airflow option"
        elif name.startswith("AIRFLOW_CONN_"):
            conn_id = name[len("AIRFLOW_CONN_") :].lower()
            assert f'"{conn_id}"' in code_text(), f"{service}: no code reads connection {conn_id}"
        elif name.startswith("HANDOVER_"):
            assert f'"{name}"' in code_text(), f"{service}: no code reads {name}"
        elif name.startswith("TARGET_DB_"):
            scripts = "".join(p.read_text() for p in (ROOT / "docker" / "postgres").glob("*.sh"))
            assert service == "postgres" and f"${name}" in scripts, f"{service}: {name}"
        else:
            prefixes = next((p for img, p in IMAGE_VARS.items() if image.startswith(img)), ())
            assert name.startswith(prefixes) if prefixes else False, (
                f"{service}: {name} is read by nothing we know of"
            )


def test_every_compose_variable_is_in_env_example_and_back():
    text = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    used = set(VAR_USE.findall(text))
    documented = set(env_example())
    assert used - documented == set(), "add these to .env.example"
    assert documented - used == set(), "remove these from .env.example or use them"


def test_handover_settings_match_what_the_code_expects():
    from handover.config.connections import _from_env, _parse_uri

    env = {k: substitute(v) for k, v in service_env("airflow-worker").items()}
    target = _parse_uri(env["AIRFLOW_CONN_HANDOVER_TARGET"])
    assert target["host"] == "postgres" and target["schema"] == env_example()["TARGET_DB_NAME"]
    # Metadata and target are separate databases.
    assert env_example()["TARGET_DB_NAME"] != env_example()["POSTGRES_DB"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/" + env_example()["POSTGRES_DB"])

    lake = json.loads(env["AIRFLOW_CONN_HANDOVER_LAKE"])
    assert lake["extra"]["endpoint_url"] == "http://minio:9000"
    assert lake["login"] == env_example()["LAKE_ACCESS_KEY"]
    assert env["HANDOVER_LAKE_URL"].startswith(f"s3://{env_example()['LAKE_BUCKET']}/")
    keys = json.loads(env["AIRFLOW_CONN_HANDOVER_KEYS"])
    assert set(keys["extra"]) == {"active_key_id", "keys", "hmac_key"}

    import os

    saved = os.environ.get("AIRFLOW_CONN_HANDOVER_LAKE")
    os.environ["AIRFLOW_CONN_HANDOVER_LAKE"] = env["AIRFLOW_CONN_HANDOVER_LAKE"]
    try:
        assert _from_env("handover_lake")["extra"]["endpoint_url"] == "http://minio:9000"
    finally:
        if saved is None:
            del os.environ["AIRFLOW_CONN_HANDOVER_LAKE"]
        else:
            os.environ["AIRFLOW_CONN_HANDOVER_LAKE"] = saved

    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    preload = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])["imports"]
    for module in preload:
        assert importlib.util.find_spec(module) is not None, module
    # One shared token secret, or tasks cannot talk to the execution API.
    for name in AIRFLOW_SERVICES:
        assert service_env(name)["AIRFLOW__API_AUTH__JWT_SECRET"] == "${AIRFLOW_JWT_SECRET}"


def test_init_migrates_and_creates_the_bucket_and_postgres_creates_the_target():
    services = compose()["services"]
    assert services["airflow-init"]["entrypoint"] == "/usr/local/bin/handover-init"
    init = (ROOT / "docker" / "airflow-init.sh").read_text()
    assert "airflow db migrate" in init and "python -m handover.storage.lake ensure-bucket" in init
    mounts = services["postgres"]["volumes"]
    assert "./docker/postgres:/docker-entrypoint-initdb.d:ro" in mounts
    sql = "".join(p.read_text() for p in (ROOT / "docker" / "postgres").glob("*.sh"))
    assert 'CREATE DATABASE :"target_db"' in sql
    for spec in services.values():
        for mount in spec.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), mount


def test_dockerfile_installs_the_pinned_requirements():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.txt" in text and "pip install -r /tmp/requirements.txt" in text
    assert "COPY --chown=airflow:0 docker/airflow-init.sh /usr/local/bin/handover-init" in text
    for folder in ("dags/", "include/", "plugins/", "expectations/"):
        assert f"COPY --chown=airflow:0 {folder} {folder}" in text, folder
        assert (ROOT / folder).is_dir()
    assert "python:3.11" in text  # the project's Python (pyproject requires-python)
    # the Data Docs assets, pinned by their lock file, where the plugin looks for them
    assert "COPY docs-assets/package.json docs-assets/package-lock.json ./" in text
    assert "RUN npm ci --ignore-scripts" in text
    assert "--from=docs-assets /assets/node_modules docs-assets/node_modules" in text
    assert (ROOT / "docs-assets" / "package-lock.json").is_file()
