"""The offline Visdom server (tools/monitor/visdom_server.py) and the training-side VisdomLogger.

A real server runs on a free localhost port for the module; nothing here reaches a CDN.
"""

import ast
import contextlib
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import visdom
import visdom.server.build

from training.visdom_logger import VisdomLogger

# visdom's client logs through the deprecated Logger.warn when the test reader connects.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO_ROOT / "tools" / "monitor" / "visdom_server.py"
STATIC_DIR = Path(visdom.__file__).parent / "static"


def _load_server_module():
    spec = importlib.util.spec_from_file_location("visdom_server", SERVER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_tool = _load_server_module()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_tool(*args, timeout=300):
    return subprocess.run([sys.executable, str(SERVER_SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def asset_mtimes(static_dir):
    return {dest: (static_dir / dest).stat().st_mtime_ns for _, _, dest in server_tool.NPM_ASSETS}


@pytest.fixture(scope="module")
def installed_assets():
    # `make visdom-assets` installs them before the tests; this only fetches when run alone.
    result = run_tool("--install-only")
    if result.returncode != 0:
        pytest.skip("Visdom front-end files are not installed and could not be installed "
                    f"(run `python tools/monitor/visdom_server.py --install-only`): {result.stderr[-500:]}")
    return STATIC_DIR


@contextlib.contextmanager
def running_server(port, env_path):
    """A tools/monitor/visdom_server.py process that answers HTTP on `port`; stopped on exit."""
    log_path = env_path.parent / f"visdom_server_{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--env-path", str(env_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"visdom server exited with {process.returncode}:\n"
                            + log_path.read_text())
            try:
                http_get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers; the tests judge the status
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("visdom server did not answer within 60 s:\n" + log_path.read_text())
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(installed_assets, tmp_path_factory):
    """(port, env_path) of a live server shared by the module's tests."""
    port = free_port()
    env_path = tmp_path_factory.mktemp("visdom_envs")
    with running_server(port, env_path):
        yield port, env_path


def test_asset_table_matches_what_visdom_build_script_downloads():
    source = Path(visdom.server.build.__file__).read_text()
    assignments = {node.targets[0].id: node.value for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    expected = set()
    for value in assignments["ext_files"].values:
        name = value.value
        subdir = "js" if name.endswith((".js", ".js.map")) else "css" if name.endswith(".css") else "fonts"
        expected.add(f"{subdir}/{name}")
    mathjax_version = re.search(r"mathjax/(\d+\.\d+\.\d+)/", source).group(1)
    for path in assignments["mathjax_path"].elts:
        expected.add(f"js/mathjax/{mathjax_version}/{path.value.split('?')[0]}")

    destinations = {dest for _, _, dest in server_tool.NPM_ASSETS}
    # The one addition: the Glyphicons SVG under the name browsers request.
    assert destinations - expected == {"fonts/glyphicons-halflings-regular.svg"}
    assert expected <= destinations

    specs = {spec for spec, _, _ in server_tool.NPM_ASSETS}
    # build.py writes its unpkg URLs as "%sNAME@VERSION/..." % base.
    unpkg_pins = re.findall(r"%s([\w.-]+)@(\d+\.\d+\.\d+)", source)
    unpkg_specs = {f"{name}@{version}" for name, version in unpkg_pins}
    plotly_version = re.search(r"plotly-(\d+\.\d+\.\d+)\.min\.js", source).group(1)
    # Every package is pinned by build.py, except d3's, whose d3js.org URLs name no release.
    assert specs - unpkg_specs == {f"plotly.js-dist-min@{plotly_version}",
                                   f"mathjax@{mathjax_version}",
                                   "d3@3.5.17", "d3-selection-multi@1.0.1"}
    assert unpkg_specs <= specs
    assert "d3.v3.min.js" in source and "d3-selection-multi.v1.js" in source


@pytest.mark.slow
def test_second_install_writes_nothing_and_visdom_own_download_step_is_satisfied(installed_assets):
    assert (installed_assets / "version.built").read_text().strip() == visdom.__version__
    before = asset_mtimes(installed_assets)

    result = run_tool("--install-only")
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
    # visdom's own step would re-download anything missing or unmarked (and fail offline).
    visdom.server.build.download_scripts()

    assert asset_mtimes(installed_assets) == before


@pytest.mark.slow
def test_static_dir_install_matches_default_install(installed_assets, tmp_path):
    cached = [server_tool.NPM_CACHE_DIR / server_tool.tarball_name(spec)
              for spec in {spec for spec, _, _ in server_tool.NPM_ASSETS}]
    if not all(path.is_file() for path in cached):
        pytest.skip(f"npm tarballs are not cached in {server_tool.NPM_CACHE_DIR}")
    custom = tmp_path / "static"

    result = run_tool("--install-only", "--static-dir", str(custom))

    assert result.returncode == 0, result.stderr
    for _, _, dest in server_tool.NPM_ASSETS:
        assert (custom / dest).read_bytes() == (installed_assets / dest).read_bytes(), dest
    # tornado renders index.html from the same folder, so visdom's own files must be there too.
    for own_file in ("index.html", "js/main.js", "css/style.css"):
        assert (custom / own_file).read_bytes() == (installed_assets / own_file).read_bytes()


@pytest.mark.slow
def test_server_serves_index_and_static_files_without_cdn(server, installed_assets):
    port, _ = server
    status, index = http_get(f"http://127.0.0.1:{port}/")
    assert status == 200
    page = index.decode()
    page_without_comments = re.sub(r"<!--.*?-->", "", page, flags=re.S)
    loaded = re.findall(r"<(?:script|link)[^>]*(?:src|href)=['\"]?([^'\" >]+)", page_without_comments)
    assert "/static/js/plotly-plotly.min.js" in [url.split("?")[0] for url in loaded]
    assert not [url for url in loaded if re.match(r"(https?:)?//", url)], loaded

    for asset in ("js/plotly-plotly.min.js", "js/mathjax/2.7.5/MathJax.js",
                  "fonts/glyphicons-halflings-regular.woff2"):
        status, body = http_get(f"http://127.0.0.1:{port}/static/{asset}")
        assert status == 200
        assert body == (installed_assets / asset).read_bytes()


@pytest.mark.slow
def test_logged_scalars_read_back_exactly(server):
    port, env_path = server
    env = "test_logged_scalars"
    logger = VisdomLogger(env, port=port)
    assert logger.active
    train = [(0, 2.5), (1, 1.75), (2, 1.125), (3, 0.5)]
    val = [(0, 3.0), (2, 1.5)]
    for step, value in train:
        logger.log_scalar("loss", step, value, trace="train")
    for step, value in val:
        logger.log_scalar("loss", step, value, trace="val")
    logger.log_scalar("lr", 0, 0.1)
    logger.log_scalar("lr", 10, 0.01)
    logger.close()

    reader = visdom.Visdom(port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    loss = json.loads(reader.get_window_data("loss", env))
    curves = {trace["name"]: (trace["x"], trace["y"]) for trace in loss["content"]["data"]}
    assert curves == {"train": ([0, 1, 2, 3], [2.5, 1.75, 1.125, 0.5]),
                      "val": ([0, 2], [3.0, 1.5])}
    assert loss["title"] == "loss"
    lr = json.loads(reader.get_window_data("lr", env))["content"]["data"]
    assert [(trace["name"], trace["x"], trace["y"]) for trace in lr] == [("lr", [0, 10], [0.1, 0.01])]
    # close() saved the env where the server reloads it from after a restart.
    saved = json.loads((env_path / f"{env}.json").read_text())
    assert set(saved["jsons"]) == {"loss", "lr"}


@pytest.mark.slow
def test_second_run_replaces_a_window_instead_of_appending_to_it(server):
    port, _ = server
    env = "test_rerun"
    for run_values in ([5.0, 4.0], [9.0]):
        logger = VisdomLogger(env, port=port)
        for step, value in enumerate(run_values):
            logger.log_scalar("loss", step, value)
        logger.close()

    reader = visdom.Visdom(port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    traces = json.loads(reader.get_window_data("loss", env))["content"]["data"]
    assert [(trace["x"], trace["y"]) for trace in traces] == [([0], [9.0])]


def _runtime_warnings(caught):
    return [str(warning.message) for warning in caught if warning.category is RuntimeWarning]


def test_logger_without_server_warns_once_and_then_does_nothing():
    port = free_port()  # bound and released: nothing listens there
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = VisdomLogger("no_server", port=port)
        for step in range(100):
            logger.log_scalar("loss", step, 1.0 / (step + 1), trace="train")
        logger.close()
    elapsed = time.monotonic() - started

    messages = _runtime_warnings(caught)
    assert len(messages) == 1
    assert f"http://127.0.0.1:{port}" in messages[0]
    assert f"python tools/monitor/visdom_server.py --port {port}" in messages[0]
    assert not logger.active
    assert elapsed < 2.0


def test_logger_gives_up_on_a_server_that_never_answers():
    # Accepts TCP connections (the port probe passes) but never sends an HTTP reply.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logger = VisdomLogger("silent_server", port=port, timeout_s=0.3)
            for step in range(20):
                logger.log_scalar("loss", step, 0.5)
            logger.close()
        elapsed = time.monotonic() - started

    assert len(_runtime_warnings(caught)) == 1
    assert not logger.active
    assert elapsed < 3.0


@pytest.mark.slow
def test_logger_survives_the_server_dying_mid_run(installed_assets, tmp_path):
    port = free_port()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with running_server(port, tmp_path / "envs") as process:
            logger = VisdomLogger("server_dies", port=port)
            logger.log_scalar("loss", 0, 1.0)
            assert logger.active
            process.terminate()
            process.wait(timeout=10)
            for step in range(1, 50):
                logger.log_scalar("loss", step, 1.0)
            logger.close()

    messages = _runtime_warnings(caught)
    assert len(messages) == 1 and f"http://127.0.0.1:{port}" in messages[0]
    assert not logger.active


def test_disabled_logger_never_contacts_a_server_or_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = VisdomLogger("disabled", port=free_port(), enabled=False)
        logger.log_scalar("loss", 0, 1.0)
        logger.close()
    assert _runtime_warnings(caught) == []
    assert not logger.active


@pytest.mark.slow
def test_front_end_is_fetched_without_node_and_matches_the_cached_tarball(tmp_path):
    # The tool downloads tarballs with Python: a PATH without node or npm must not matter.
    cached = server_tool.NPM_CACHE_DIR / "classnames-2.2.5.tgz"
    if not cached.is_file():
        pytest.skip(f"{cached} not cached (make visdom-assets fetches it)")
    target = tmp_path / "classnames-2.2.5.tgz"
    script = (f"import importlib.util, pathlib; spec = importlib.util.spec_from_file_location('v', {str(SERVER_SCRIPT)!r}); "
              f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
              f"m.fetch_tarball('classnames@2.2.5', pathlib.Path({str(target)!r}))")
    result = subprocess.run([sys.executable, "-c", script], env={"PATH": str(tmp_path)}, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0 and "cannot fetch" in result.stderr:
        pytest.skip(f"the npm registry is not reachable from here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert target.read_bytes() == cached.read_bytes()


@pytest.mark.slow
def test_a_training_run_prints_its_own_environment_and_its_curves_are_there(server, tmp_path):
    """train.py with Visdom on: log.txt names the run's environment URL (not the empty `main`), and the
    server holds that environment's loss curve at the logged steps."""
    import train
    from dataset import write_record_pack
    from dataset.synthetic import SyntheticFaces

    port, _ = server
    faces = SyntheticFaces(seed=3)
    write_record_pack(tmp_path / "pack", ((faces.render(i // 8, i % 8), i // 8) for i in range(32)), num_classes=4)
    name = "visdom run"  # a space, so the URL must quote it
    train.main([f"--train_data={tmp_path / 'pack'}", "--val_sets=", "--batch_size=8", "--workers=0",
                f"--output_dir={tmp_path}", f"--name={name}", "--visdom=true", f"--visdom_port={port}",
                "--progress=false", "--precision=fp32", "--max_steps=2", "--log_freq=1", "--test_freq=0",
                "--save_freq=0"])
    log = (tmp_path / name / "log.txt").read_text()
    assert f"live curves: http://127.0.0.1:{port}/env/visdom%20run\n" in log
    reader = visdom.Visdom(port=port, env=name, raise_exceptions=True, use_incoming_socket=False)
    loss = json.loads(reader.get_window_data("loss", name))["content"]["data"]
    logged = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    train_records = [record for record in logged if record["event"] == "train"]
    assert [(trace["x"], trace["y"]) for trace in loss] == [([r["step"] for r in train_records],
                                                            [r["loss"] for r in train_records])]
