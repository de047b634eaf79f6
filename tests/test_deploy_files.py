"""The deploy files cannot run here (no Docker engine, no cluster): keep them in step with the code."""

from __future__ import annotations

import re
import shutil
from urllib.parse import urlsplit
import subprocess
from pathlib import Path
from string import Template

import pytest
import yaml

from config import Settings, SettingsError, load_settings
from embed_server.app import create_app
from embed_server.cache_secret import KEY_FILE, CacheSecretError, cache_secret
from tests.servers import REPO
from vector_bridge.openwebui_env import model_dimension, openwebui_environment, pgvector_environment

DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
K8S = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
SETTINGS = Settings()
# What `vector-bridge openwebui-env` prints for the compose network and the cluster.
EXPECTED_OPENWEBUI_ENV = openwebui_environment(load_settings(
    public_url="http://embeddings:8080", chroma_host="chroma-proxy", chroma_port=8000, chroma_token="TOKEN",
    api_keys=["KEY"]))
SECRET_VALUES = {"RAG_OPENAI_API_KEY", "CHROMA_HTTP_HEADERS"}


def k8s(kind: str, name: str) -> dict:
    return next(d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name)


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def k8s_env(deployment: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def routes() -> set[str]:
    return set(create_app(SETTINGS).openapi()["paths"])


def pinned_chromadb() -> str:
    return re.search(r'"chromadb==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def test_open_webui_env_matches_what_vector_bridge_prints() -> None:
    for env in (COMPOSE["services"]["open-webui"]["environment"], k8s_env(k8s("Deployment", "open-webui"))):
        assert set(EXPECTED_OPENWEBUI_ENV) <= set(env)
        for name, value in EXPECTED_OPENWEBUI_ENV.items():
            if name not in SECRET_VALUES:
                assert compose_value(str(env[name])) == value, name  # compose: as it is without variables
        assert env["ENABLE_PERSISTENT_CONFIG"] == "false"
    assert COMPOSE["services"]["open-webui"]["environment"]["CHROMA_HTTP_HEADERS"] == "Authorization=Bearer ${CHROMA_TOKEN}"


def test_embed_settings_in_deploy_files_are_real_settings() -> None:
    known = {f"EMBED_{name.upper()}" for name in Settings.model_fields}
    used = set(COMPOSE["services"]["embeddings"]["environment"]) | set(k8s_env(k8s("StatefulSet", "embeddings")))
    assert {name for name in used if name.startswith("EMBED_")} <= known
    assert used & {"EMBED_API_KEYS", "EMBED_API_KEYS_FILE"}  # keys are on wherever the server leaves this host


def test_ports_and_probes_match_the_server() -> None:
    assert COMPOSE["services"]["embeddings"]["environment"]["EMBED_PORT"] == str(SETTINGS.port)
    assert "/ready" in COMPOSE["services"]["embeddings"]["healthcheck"]["test"][-1]
    embeddings = container(k8s("StatefulSet", "embeddings"))
    assert embeddings["ports"][0]["containerPort"] == SETTINGS.port
    assert embeddings["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert embeddings["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health"} <= routes()
    assert k8s("Service", "embeddings")["spec"]["ports"][0]["port"] == SETTINGS.port


def test_embeddings_scale_on_cpu_from_two_replicas_with_resources() -> None:
    deployment = k8s("StatefulSet", "embeddings")
    hpa = k8s("HorizontalPodAutoscaler", "embeddings")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "embeddings"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in deployment["spec"]  # the HPA's to set: an apply must not reset it
    assert container(deployment)["resources"]["requests"]["cpu"]  # utilization is a share of the request
    # Each replica's torch pool is its requested share of the node, not the whole node.
    env = {e["name"]: e for e in container(deployment)["env"]}
    threads = env["EMBED_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"resource": "requests.cpu"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_chroma_is_reachable_only_through_the_token_proxy() -> None:
    assert "ports" not in COMPOSE["services"]["chroma"]
    assert COMPOSE["services"]["chroma-proxy"]["environment"]["UPSTREAM"] == "chroma:8000"
    policy = k8s("NetworkPolicy", "chroma-only-from-proxy")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app": "chroma-proxy"}
    assert k8s("PersistentVolumeClaim", "chroma-data")
    assert container(k8s("Deployment", "chroma"))["volumeMounts"][0]["mountPath"] == "/data"


def test_image_versions_match_the_pinned_ones() -> None:
    assert COMPOSE["services"]["chroma"]["image"] == f"chromadb/chroma:{pinned_chromadb()}"
    assert container(k8s("Deployment", "chroma"))["image"] == f"chromadb/chroma:{pinned_chromadb()}"
    for image in (COMPOSE["services"]["open-webui"]["image"], container(k8s("Deployment", "open-webui"))["image"]):
        assert image == f"ghcr.io/open-webui/open-webui:v{SETTINGS.openwebui_version}"


def test_every_data_directory_is_a_volume() -> None:
    assert set(COMPOSE["volumes"]) == {"embed-state", "chroma-data", "open-webui-data", "redis-data", "pgvector-data"}
    assert "pgvector-data:/var/lib/postgresql/data" in COMPOSE["services"]["pgvector"]["volumes"]
    assert "redis-data:/data" in COMPOSE["services"]["redis"]["volumes"]
    assert "embed-state:/data/state" in COMPOSE["services"]["embeddings"]["volumes"]
    assert COMPOSE["services"]["embeddings"]["environment"]["EMBED_STATE_DIR"] == "/data/state"


def dockerfile_user_uid() -> int:
    return int(re.search(r"useradd .*--uid (\d+) (\S+)", (REPO / "Dockerfile").read_text()).group(1))


def test_state_folder_is_a_volume_the_image_user_owns() -> None:
    """A named volume copies owner and mode from the image's folder: the server's user must own it."""
    dockerfile = (REPO / "Dockerfile").read_text()
    state = COMPOSE["services"]["embeddings"]["environment"]["EMBED_STATE_DIR"]
    uid = dockerfile_user_uid()
    before_user = dockerfile[: dockerfile.index("\nUSER ")]
    assert re.search(rf"mkdir -p {state}\b.*chown {uid}:{uid} {state}\b", before_user)
    assert f"ENV EMBED_STATE_DIR={state}" in dockerfile
    assert any(volume.split(":")[1] == state and volume.split(":")[0] in COMPOSE["volumes"]
               for volume in COMPOSE["services"]["embeddings"]["volumes"])


def test_k8s_state_is_a_persistent_volume_per_replica_the_user_can_write() -> None:
    statefulset = k8s("StatefulSet", "embeddings")
    pod = statefulset["spec"]["template"]["spec"]
    state = k8s_env(statefulset)["EMBED_STATE_DIR"]
    assert not state.startswith("/tmp")
    [mount] = [m for m in container(statefulset)["volumeMounts"] if m["mountPath"] == state]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims and mount["name"] not in {v["name"] for v in pod.get("volumes", [])}
    uid = dockerfile_user_uid()
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["fsGroup"] == uid
    assert k8s("Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_dockerfile_runs_non_root_with_a_healthcheck() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", dockerfile, re.MULTILINE)
    assert f"EMBED_PORT={SETTINGS.port}" in dockerfile


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    manifests = {f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    for entry in kustomization["configMapGenerator"][0]["files"]:
        assert (DEPLOY / entry).is_file()


def test_the_proxy_template_is_valid_nginx(tmp_path: Path) -> None:
    for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / folder).mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(Template((DEPLOY / "nginx" / "chroma-auth.conf.template").read_text()).safe_substitute(
        LISTEN="127.0.0.1:1", UPSTREAM="127.0.0.1:2", CHROMA_TOKEN="abc", PREFIX=tmp_path))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_deployment_serves_beyond_loopback_only_with_keys_from_a_secret(tmp_path: Path) -> None:
    compose = COMPOSE["services"]["embeddings"]
    key_file = compose["environment"]["EMBED_API_KEYS_FILE"]
    assert key_file == f"/run/secrets/{compose['secrets'][0]}" and "environment" in COMPOSE["secrets"][compose["secrets"][0]]
    k8s_keys = next(e for e in container(k8s("StatefulSet", "embeddings"))["env"] if e["name"] == "EMBED_API_KEYS")
    assert k8s_keys["valueFrom"]["secretKeyRef"]["name"] == "openwebui-backend"
    # As each deployment configures it, the server starts; with its keys taken away, it refuses to.
    secret = tmp_path / "embed_api_key"
    secret.write_text("0123456789abcdef\n")
    served = [load_settings(host="0.0.0.0", api_keys_file=secret), load_settings(host="0.0.0.0", api_keys="k8s-secret")]
    assert [settings.exposure_problem() for settings in served] == [None, None]
    assert served[0].api_keys[0].get_secret_value() == "0123456789abcdef"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EMBED_HOST=0.0.0.0" in dockerfile and not re.search(r"EMBED_API_KEYS\S*=", dockerfile)  # no key baked in
    assert "EMBED_API_KEYS" in load_settings(host="0.0.0.0").exposure_problem()


REDIS_K8S = [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "optional" / "redis.yaml").read_text()) if doc]


def redis_k8s(kind: str, name: str) -> dict:
    return next(d for d in REDIS_K8S if d["kind"] == kind and d["metadata"]["name"] == name)


def _redis_server_accepts(args: list[str], tmp_path: Path) -> None:
    """Start the real redis-server with a deploy file's arguments (port and folder made local)."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.command += args  # later arguments win: the deploy file's settings over the test's
    server.command += ["--port", str(server.port), "--dir", str(tmp_path), "--bind", "127.0.0.1"]
    server.password = args[args.index("--requirepass") + 1]
    server.start()
    try:
        with server.client() as client:
            config = client.config_get("*")
        assert config["maxmemory-policy"] == "volatile-lru" and config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"  # the deploy file's, not the test server's "always"
        assert int(config["maxmemory"]) > 0
    finally:
        server.stop()


def test_compose_redis_is_an_optional_profile_wired_to_the_embeddings(tmp_path: Path) -> None:
    redis = COMPOSE["services"]["redis"]
    assert redis["profiles"] == ["redis"] and "ports" not in redis  # only on the compose network
    assert COMPOSE["services"]["embeddings"]["environment"]["EMBED_REDIS_URL"] == "${EMBED_REDIS_URL:-}"
    # Without the profile the URL is empty, and empty means no Redis.
    assert load_settings(redis_url="").redis_url is None
    command = redis["command"][-1].replace("$$", "$")
    args = command.split("exec redis-server ", 1)[1].split()
    _redis_server_accepts([arg.replace('"$REDIS_PASSWORD"', "compose-password") for arg in args], tmp_path)


def test_k8s_redis_is_optional_private_and_what_the_secret_names(tmp_path: Path) -> None:
    env = {e["name"]: e for e in container(k8s("StatefulSet", "embeddings"))["env"]}
    reference = env["EMBED_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "openwebui-backend", "key": "redis-url", "optional": True}
    secret_example = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    assert "redis-url: redis://:change-me-redis-password@redis:6379/0" in secret_example
    service = redis_k8s("Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    policy = redis_k8s("NetworkPolicy", "redis-only-from-embeddings")
    pods = k8s("StatefulSet", "embeddings")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= pods.items()
    redis = container(redis_k8s("Deployment", "redis"))
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "openwebui-backend", "key": "redis-password"}
    assert redis["volumeMounts"][0]["mountPath"] == "/data"
    assert redis_k8s("PersistentVolumeClaim", "redis-data")
    _redis_server_accepts([arg.replace("$(REDIS_PASSWORD)", "k8s-password") for arg in redis["args"]], tmp_path)


def test_dockerfile_has_a_cpu_image_by_default_and_a_cuda_target() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.MULTILINE)
    assert stages[-1] == "cpu" and "cuda" in stages  # `docker build .` builds the last stage
    body = {name: part for name, part in re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile,
                                                      re.MULTILINE | re.DOTALL)}
    assert re.search(r"whl/cpu torch==2\.13\.0", body["cpu"]) and "[onnx]" in body["cpu"]
    assert re.search(r"whl/cu\d+", body["cuda"]) and "torch==2.13.0" in body["cuda"]
    settings = {f"EMBED_{name.upper()}" for name in Settings.model_fields}
    assert {"EMBED_DEVICE", "EMBED_PRECISION"} <= settings
    assert "EMBED_DEVICE=cuda" in body["cuda"] and "EMBED_PRECISION=fp16" in body["cuda"]
    for stage in ("cpu", "cuda"):
        assert re.findall(r"^USER\s+(\S+)", body[stage], re.MULTILINE)[-1] == "app"


def test_the_image_holds_every_package_the_project_installs() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    packages = re.search(r'include = \[(.*?)\]', (REPO / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in dockerfile, package


# -- PostgreSQL + pgvector as the store ------------------------------------------------------------

POSTGRES_K8S = [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "optional" / "postgres.yaml").read_text()) if doc]
PGVECTOR_NAMES = {"VECTOR_DB", "PGVECTOR_DB_URL", "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH", "PGVECTOR_INDEX_METHOD"}


def postgres_k8s(kind: str, name: str) -> dict:
    return next(d for d in POSTGRES_K8S if d["kind"] == kind and d["metadata"]["name"] == name)


def compose_value(value: str, **variables: str) -> str:
    """A compose value as compose interpolates it (${NAME:-default})."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), value)


def secret_literals() -> list[str]:
    """Every deploy file's text, where a password must never be written."""
    files = [DEPLOY / "docker-compose.yml", *(DEPLOY / "k8s").rglob("*.yaml")]
    return [path.read_text() for path in files if path.name != "secret.example.yaml"]


def test_compose_pgvector_is_an_optional_private_profile_with_its_password_from_a_secret() -> None:
    postgres = COMPOSE["services"]["pgvector"]
    assert postgres["profiles"] == ["pgvector"] and "ports" not in postgres  # only on the compose network
    assert postgres["image"] == "pgvector/pgvector:pg17"
    [secret] = postgres["secrets"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{secret}"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert COMPOSE["secrets"][secret] == {"environment": "POSTGRES_PASSWORD"}
    assert [v.split(":")[1] for v in postgres["volumes"]] == ["/var/lib/postgresql/data"]
    assert postgres["volumes"][0].split(":")[0] in COMPOSE["volumes"]
    # Open WebUI waits for it only when the profile runs it.
    dependency = COMPOSE["services"]["open-webui"]["depends_on"]["pgvector"]
    assert dependency == {"condition": "service_healthy", "required": False}


def test_compose_points_open_webui_and_the_server_at_pgvector_as_vector_bridge_does() -> None:
    postgres = COMPOSE["services"]["pgvector"]["environment"]
    openwebui = COMPOSE["services"]["open-webui"]["environment"]
    embeddings = COMPOSE["services"]["embeddings"]["environment"]
    # Both URLs are built from the variable the secret holds: the same password reaches the database.
    for url in (openwebui["PGVECTOR_DB_URL"], embeddings["EMBED_PGVECTOR_URL"]):
        assert "${POSTGRES_PASSWORD:-}" in url
        parts = urlsplit(compose_value(url, POSTGRES_PASSWORD="0123abcd"))
        assert (parts.scheme, parts.username, parts.password) == ("postgresql", postgres["POSTGRES_USER"], "0123abcd")
        assert (parts.hostname, parts.port, parts.path) == ("pgvector", 5432, f"/{postgres['POSTGRES_DB']}")
    # Chroma stays the default; one switch, VECTOR_DB, moves Open WebUI and /v1/search together.
    for variables, store in (({}, "chroma"), ({"VECTOR_DB": "pgvector"}, "pgvector")):
        assert compose_value(openwebui["VECTOR_DB"], **variables) == store
        assert compose_value(embeddings["EMBED_STORE"], **variables) == store
        assert load_settings(store=compose_value(embeddings["EMBED_STORE"], **variables)).store == store
    url = compose_value(openwebui["PGVECTOR_DB_URL"], POSTGRES_PASSWORD="0123abcd")
    settings = load_settings(pgvector_url=url)
    printed = pgvector_environment(settings, model_dimension(settings, openwebui["RAG_EMBEDDING_MODEL"]))
    assert set(printed) <= set(openwebui)
    for name, value in printed.items():
        assert compose_value(str(openwebui[name]), VECTOR_DB="pgvector", POSTGRES_PASSWORD="0123abcd") == value, name


def test_k8s_postgres_is_a_statefulset_with_its_password_from_the_secret() -> None:
    statefulset = postgres_k8s("StatefulSet", "postgres")
    service = postgres_k8s("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["port"] == 5432
    postgres = container(statefulset)
    assert postgres["image"] == "pgvector/pgvector:pg17"
    env = {e["name"]: e for e in postgres["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "openwebui-backend",
                                                                     "key": "postgres-password"}
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [mount] = postgres["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"] and mount["mountPath"] == "/var/lib/postgresql/data"
    assert env["PGDATA"]["value"].startswith(mount["mountPath"] + "/")  # not the volume's root
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    policy = postgres_k8s("NetworkPolicy", "postgres-only-from-clients")
    allowed = [rule["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"][0]["from"]]
    assert {"app": "open-webui"} in allowed and {"app": "embeddings"} in allowed
    # The in-cluster URL of the Secret's example names this Service, user and database.
    secret_example = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    url = urlsplit(re.search(r"pgvector-url: (\S+)", secret_example).group(1))
    assert (url.hostname, url.port, url.path) == (service["metadata"]["name"], 5432, f"/{env['POSTGRES_DB']['value']}")
    assert url.username == env["POSTGRES_USER"]["value"]


def test_k8s_open_webui_and_the_server_read_the_store_url_from_the_secret() -> None:
    """In the cluster or external: either way the URL is the Secret's pgvector-url, never a literal."""
    openwebui = {e["name"]: e for e in container(k8s("Deployment", "open-webui"))["env"]}
    embeddings = {e["name"]: e for e in container(k8s("StatefulSet", "embeddings"))["env"]}
    reference = {"name": "openwebui-backend", "key": "pgvector-url", "optional": True}
    assert openwebui["PGVECTOR_DB_URL"]["valueFrom"]["secretKeyRef"] == reference
    assert embeddings["EMBED_PGVECTOR_URL"]["valueFrom"]["secretKeyRef"] == reference
    assert openwebui["VECTOR_DB"]["value"] == embeddings["EMBED_STORE"]["value"] == "chroma"
    settings = load_settings(pgvector_url="postgresql://u:p@postgres:5432/openwebui")
    printed = pgvector_environment(settings, model_dimension(settings, openwebui["RAG_EMBEDDING_MODEL"]["value"]))
    for name, value in printed.items():
        if name not in ("VECTOR_DB", "PGVECTOR_DB_URL"):
            assert openwebui[name]["value"] == value, name


def test_the_pgvector_names_are_what_open_webui_reads() -> None:
    assert PGVECTOR_NAMES <= set(pgvector_environment(load_settings(pgvector_url="postgresql://u:p@h/d"), 384))
    # Open WebUI's own source, where `vector-bridge up --with-openwebui` installed it.
    venv = SETTINGS.cache_dir / f"open-webui-{SETTINGS.openwebui_version}"
    configs = sorted(venv.glob("lib/python3*/site-packages/open_webui/config.py"))
    if not configs:
        pytest.skip(f"Open WebUI {SETTINGS.openwebui_version} is not installed here")
    source = configs[0].read_text()
    for name in PGVECTOR_NAMES:
        assert re.search(rf"os\.(getenv|environ\.get)\(\s*['\"]{name}['\"]", source), name


def test_no_deploy_file_holds_a_password_or_key() -> None:
    for text in secret_literals():
        assert not re.search(r"postgres(ql)?://[^:/\s]+:(?![$<])[^@\s]+@", text)  # a URL with a literal password
        assert not re.search(r"redis://:(?![$<])[^@\s]+@", text)
        assert not re.search(r"(PASSWORD|KEY|TOKEN)\w*:\s+['\"]?(?!\$)\w{6,}", text)
    # The example Secret holds only placeholders.
    example = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    for value in re.findall(r"^\s*#?\s*[\w-]+: (\S+)$", example, re.MULTILINE):
        if re.search(r"password|key|token|://", value):
            assert "change-me" in value, value


def test_the_replicas_share_one_cache_key_from_a_secret() -> None:
    assert COMPOSE["services"]["embeddings"]["environment"]["EMBED_REDIS_CACHE_KEY"] == "${EMBED_REDIS_CACHE_KEY:-}"
    assert load_settings(redis_cache_key="").redis_cache_key is None  # unset in compose: this replica's own key
    env = {e["name"]: e for e in container(k8s("StatefulSet", "embeddings"))["env"]}
    assert env["EMBED_REDIS_CACHE_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "openwebui-backend", "key": "redis-cache-key", "optional": True}


def secret_create_command(example: str) -> str:
    """The example Secret's first `kubectl create secret` command, its continued lines joined."""
    lines = [line.lstrip("#").strip() for line in example.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("kubectl create secret"))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(command)


def test_k8s_takes_the_cache_key_from_the_secret_because_fsgroup_opens_key_files(tmp_path: Path) -> None:
    """fsGroup makes every file on the state volume group-readable (0660) at each mount, and the server refuses
    a key file its group may read: a replica that fell back to its generated key would lose the shared cache at
    its first restart. So the key comes from the Secret (optional: pods without Redis need none), and the
    documented Secret holds one."""
    statefulset = k8s("StatefulSet", "embeddings")
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
    reference = next(e for e in container(statefulset)["env"] if e["name"] == "EMBED_REDIS_CACHE_KEY")
    reference = reference["valueFrom"]["secretKeyRef"]
    example = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    secret = yaml.safe_load(example)
    assert secret["metadata"]["name"] == reference["name"]
    placeholder = secret["stringData"][reference["key"]]
    # The example's values are public: the server refuses to start on them, keys and cache key alike.
    for setting in ({"redis_cache_key": placeholder}, {"api_keys": secret["stringData"]["embed-api-key"]}):
        with pytest.raises(SettingsError, match="example's placeholder"):
            load_settings(**setting)
    own = "0123456789abcdef0123456789abcdef"
    command = secret_create_command(example)
    assert f"generic {reference['name']} " in command and f"--from-literal={reference['key']}=" in command
    # What fsGroup leaves: refused, the error naming the fix; with the Secret's key no file is read.
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_text("k" * 64)
    (state / KEY_FILE).chmod(0o660)
    with pytest.raises(CacheSecretError, match="fsGroup.*EMBED_REDIS_CACHE_KEY"):
        cache_secret(load_settings(state_dir=state))
    assert cache_secret(load_settings(state_dir=state, redis_cache_key=own)) == own.encode()
