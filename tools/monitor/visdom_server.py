"""Start a Visdom server that needs no internet (visdom 0.2.4, https://github.com/fossasia/visdom).

`python -m visdom.server` first runs `visdom.server.build.download_scripts()`, which fetches the
dashboard's front-end (jQuery, Bootstrap, React, Plotly, d3, MathJax, ...) from unpkg.com,
cdn.plot.ly, d3js.org and cdnjs.cloudflare.com, and dies on a machine that cannot reach them.
This launcher takes the very same files, at the versions build.py pins, from the npm registry
(the package tarballs, fetched over HTTPS by Python and checked against the registry's integrity
hashes: no Node.js is needed; kept in `.cache/visdom-npm/`), stores them under the names build.py gives
them, writes build.py's `static/version.built` marker, and then starts visdom's tornado
`Application` itself, so no download step ever runs.

    python tools/monitor/visdom_server.py --install-only     # fetch and install the assets, then exit
    python tools/monitor/visdom_server.py --port 8097        # install if needed, then serve on 127.0.0.1

With the assets and the marker in visdom's own static folder (the default), the download step
of plain `python -m visdom.server` also finds everything in place; but with tornado >= 6.6 that
server answers its index page with 403 (see `VisdomStaticFiles`), which this launcher avoids.
"""

import argparse
import asyncio
import base64
import filecmp
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import tornado.web
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
from runtime.artifacts import atomic_file  # noqa: E402
NPM_CACHE_DIR = REPO_ROOT / ".cache" / "visdom-npm"
DEFAULT_ENV_PATH = REPO_ROOT / "runs" / "visdom"
NPM_REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org")

MATHJAX_VERSION = "2.7.5"
# The MathJax files build.py fetches from cdnjs (query strings dropped, as build.py does).
MATHJAX_FILES = (
    "MathJax.js",
    "config/Safe.js",
    "config/TeX-AMS-MML_HTMLorMML.js",
    "extensions/Safe.js",
    "jax/output/SVG/config.js",
    "jax/output/SVG/jax.js",
    "jax/output/SVG/fonts/TeX/fontdata.js",
    "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
)

_GLYPHICONS = "glyphicons-halflings-regular"

# (npm package@version, file inside the package, destination under the static folder).
# Destinations are the names visdom.server.build.download_scripts gives the CDN downloads;
# unpkg.com serves npm tarball contents verbatim, so these are byte-for-byte the same files.
NPM_ASSETS = (
    ("jquery@3.1.1", "dist/jquery.min.js", "js/jquery.min.js"),
    ("bootstrap@3.3.7", "dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
    ("bootstrap@3.3.7", "dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
    ("react@16.2.0", "umd/react.production.min.js", "js/react-react.min.js"),
    ("react-dom@16.2.0", "umd/react-dom.production.min.js", "js/react-dom.min.js"),
    ("react-modal@3.1.10", "dist/react-modal.min.js", "js/react-modal.min.js"),
    # cdn.plot.ly/plotly-2.11.1.min.js is published on npm as the plotly.js-dist-min bundle.
    ("plotly.js-dist-min@2.11.1", "plotly.min.js", "js/plotly-plotly.min.js"),
    ("sjcl@1.0.7", "sjcl.js", "js/sjcl.js"),
    ("layout-bin-packer@1.4.0", "dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
    ("layout-bin-packer@1.4.0", "dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
    # d3js.org/d3.v3.min.js and d3-selection-multi.v1.js serve the last 3.x / 1.x releases.
    ("d3@3.5.17", "d3.min.js", "js/d3.v3.min.js"),
    ("d3-selection-multi@1.0.1", "build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),
    ("save-svg-as-png@1.4.17", "lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),
    ("react-resizable@1.4.6", "css/styles.css", "css/react-resizable-styles.css"),
    ("react-grid-layout@0.16.3", "css/styles.css", "css/react-grid-layout-styles.css"),
    # build.py saves unpkg's answer for the bare package URL (its main file) as fonts/classnames.
    ("classnames@2.2.5", "index.js", "fonts/classnames"),
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.eot", f"fonts/{_GLYPHICONS}.eot"),
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.woff2", f"fonts/{_GLYPHICONS}.woff2"),
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.woff", f"fonts/{_GLYPHICONS}.woff"),
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.ttf", f"fonts/{_GLYPHICONS}.ttf"),
    # build.py keeps the URL fragment in the file name, which browsers never request; the
    # plain name is what bootstrap.min.css actually loads, so both are installed.
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.svg",
     f"fonts/{_GLYPHICONS}.svg#glyphicons_halflingsregular"),
    ("bootstrap@3.3.7", f"dist/fonts/{_GLYPHICONS}.svg", f"fonts/{_GLYPHICONS}.svg"),
) + tuple(
    (f"mathjax@{MATHJAX_VERSION}", name, f"js/mathjax/{MATHJAX_VERSION}/{name}")
    for name in MATHJAX_FILES
)

# build.py skips its downloads when this file holds visdom's version string.
BUILT_MARKER = "version.built"


def visdom_package_dir():
    """visdom's install folder, found without importing visdom (whose import pulls in torch)."""
    spec = importlib.util.find_spec("visdom")
    if spec is None or spec.origin is None:
        raise SystemExit("visdom is not installed in this Python environment: pip install visdom")
    return Path(spec.origin).parent


def visdom_version():
    """The string build.py compares with the marker: visdom reads it from its VERSION file."""
    version_file = visdom_package_dir() / "VERSION"
    return version_file.read_text().strip() if version_file.exists() else "no_version_file"


def missing_assets(static_dir):
    """Destinations (relative to static_dir) that are not installed yet."""
    return [dest for _, _, dest in NPM_ASSETS if not (static_dir / dest).is_file()]


def is_installed(static_dir):
    marker = static_dir / BUILT_MARKER
    return (not missing_assets(static_dir) and marker.is_file()
            and marker.read_text().strip() == visdom_version())


def tarball_name(spec):
    name, version = spec.rsplit("@", 1)
    return f"{name}-{version}.tgz"


def _registry_get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        raise SystemExit(f"cannot fetch {url} ({error}); on a machine without access to the npm registry, "
                         f"copy the tarballs into {NPM_CACHE_DIR}") from None


def fetch_tarball(spec: str, target: Path) -> None:
    """One package tarball straight from the npm registry (no Node.js needed), checked against the
    integrity hash the registry publishes for it."""
    name, version = spec.rsplit("@", 1)
    metadata = json.loads(_registry_get(f"{NPM_REGISTRY}/{name}/{version}"))
    dist = metadata["dist"]
    data = _registry_get(dist["tarball"])
    algorithm, _, expected = dist.get("integrity", "").partition("-")
    if algorithm in ("sha512", "sha384", "sha256"):
        actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    else:  # old packages publish only a sha1 shasum
        algorithm, expected, actual = "sha1", dist["shasum"], hashlib.sha1(data).hexdigest()
    if actual != expected:
        raise SystemExit(f"{dist['tarball']}: {algorithm} of the download does not match the registry's")
    _write_atomically(target, data)


def fetch_tarballs(specs):
    """Return {spec: tarball path}, downloading only the tarballs not cached yet."""
    tarballs = {spec: NPM_CACHE_DIR / tarball_name(spec) for spec in specs}
    to_fetch = sorted(spec for spec, path in tarballs.items() if not path.is_file())
    if to_fetch:
        print(f"fetching {' '.join(to_fetch)} from {NPM_REGISTRY} -> {NPM_CACHE_DIR}", flush=True)
    for spec in tqdm(to_fetch, desc="npm tarballs", unit="package", disable=not to_fetch):
        fetch_tarball(spec, tarballs[spec])
    return tarballs


def _read_package_files(tarball, members):
    """{member: bytes} for files of an npm tarball, whose contents sit under `package/`."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            return {member: archive.extractfile(f"package/{member}").read() for member in members}
    except (tarfile.TarError, KeyError, EOFError, OSError) as error:
        raise SystemExit(f"cannot read {members} from {tarball} ({error!r}); delete that "
                         "tarball and run again to fetch it afresh") from error


def _write_atomically(path, data):
    # An interrupted install must never leave a truncated file that the existence check would later
    # take for a complete one.
    with atomic_file(path) as handle:
        handle.write(data)


def copy_visdom_own_static(static_dir):
    """Copy the files visdom ships itself (index.html, main.js, ...) into a custom static dir.

    tornado uses one folder for templates and static files, so a --static-dir must hold them
    too. They are refreshed whenever they differ, so a visdom upgrade is picked up.
    """
    package_static = visdom_package_dir() / "static"
    cdn_files = {dest for _, _, dest in NPM_ASSETS} | {BUILT_MARKER}
    for source in package_static.rglob("*"):
        relative = source.relative_to(package_static).as_posix()
        if not source.is_file() or relative in cdn_files or relative.startswith("js/mathjax/"):
            continue
        target = static_dir / relative
        if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def install_assets(static_dir):
    """Install every missing front-end file into static_dir; return the number written."""
    if static_dir != (visdom_package_dir() / "static").resolve():
        copy_visdom_own_static(static_dir)
    if is_installed(static_dir):
        return 0
    missing = set(missing_assets(static_dir))
    wanted = [asset for asset in NPM_ASSETS if asset[2] in missing]
    tarballs = fetch_tarballs({spec for spec, _, _ in wanted})
    for spec in sorted(tarballs):
        # One member may go to two destinations (the Glyphicons SVG), hence pairs, not a dict.
        pairs = [(member, dest) for s, member, dest in wanted if s == spec]
        contents = _read_package_files(tarballs[spec], [member for member, _ in pairs])
        for member, dest in pairs:
            _write_atomically(static_dir / dest, contents[member])
    _write_atomically(static_dir / BUILT_MARKER, visdom_version().encode())
    return len(wanted)


class VisdomStaticFiles(tornado.web.StaticFileHandler):
    """tornado's static handler, except that it lets visdom link its user stylesheet again.

    visdom's index.html links `static_url("../user/style.css")`, served by visdom's /user/
    handler. tornado < 6.6 returned that path unversioned; tornado 6.6 raises 403 for any
    static_url outside static_path, so the dashboard's index page itself fails with 403.
    """

    @classmethod
    def make_static_url(cls, settings, path, include_version=True):
        if path.startswith("../"):
            return settings.get("static_url_prefix", "/static/") + path
        return super().make_static_url(settings, path, include_version)


async def serve(host, port, env_path, static_dir):
    # Imported here: visdom's import pulls in torch, which --install-only does not need.
    from visdom.server import app as visdom_app

    # Application() hands this module-level dict to tornado; pointing it at static_dir is
    # visdom's only hook for where index.html and the assets are served from.
    visdom_app.tornado_settings["static_path"] = str(static_dir)
    visdom_app.tornado_settings["template_path"] = str(static_dir)
    visdom_app.tornado_settings["static_handler_class"] = VisdomStaticFiles
    application = visdom_app.Application(port=port, env_path=str(env_path))
    application.listen(port, address=host, max_buffer_size=1024 ** 3)
    print(f"Visdom is serving http://{host}:{port} (envs saved in {env_path})", flush=True)
    await asyncio.Event().wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; 0.0.0.0 exposes the dashboard to the network")
    parser.add_argument("--env-path", type=Path, default=DEFAULT_ENV_PATH,
                        help="folder where visdom saves and reloads its envs as JSON")
    parser.add_argument("--static-dir", type=Path, default=None,
                        help="serve from this folder instead of visdom's own static folder "
                             "(for a read-only visdom install)")
    parser.add_argument("--install-only", action="store_true",
                        help="install the front-end files and exit without serving")
    args = parser.parse_args()

    static_dir = (args.static_dir or visdom_package_dir() / "static").resolve()
    try:
        installed = install_assets(static_dir)
    except OSError as error:
        raise SystemExit(f"cannot install the Visdom front-end into {static_dir} ({error}); pass "
                         "--static-dir DIR to install into and serve from a writable folder")
    print(f"Visdom front-end in {static_dir}: "
          + (f"installed {installed} files" if installed else "already installed"), flush=True)
    if args.install_only:
        return
    args.env_path.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.host, args.port, args.env_path.resolve(), static_dir))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
