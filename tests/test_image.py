"""The slim image (`make image`): its config, its files, and its entrypoint run in its own root.

The OCI layout is dist/image/protege-slim (or PROTEGE_IMAGE_LAYOUT). When it is missing the
module builds it once with docker/build-image.sh (about 2½ minutes on two cores), which needs
root, mmdebstrap and umoci; without root the module is skipped, saying why. The image is
unpacked with umoci and run with chroot as user 10001 on a read-only bind of its root
filesystem, the spool and /tmp mounted writable, as the chart's pods have them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fake_teacher import FakeTeacher
from tests.s3_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = Path(os.environ.get("PROTEGE_IMAGE_LAYOUT", ROOT / "dist" / "image" / "protege-slim"))
USER = "10001:10001"
SPOOL = "/var/lib/protege/spool"
LABELS = ("title", "description", "version", "source", "licenses", "created", "revision")


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def build_if_missing() -> None:
    """Builds the layout with docker/build-image.sh when it is not there."""
    if (LAYOUT / "index.json").exists():
        return
    if os.geteuid() != 0:
        pytest.skip(f"{LAYOUT} is not built and building it needs root (mmdebstrap, chroot)")
    missing = [tool for tool in ("mmdebstrap", "umoci") if shutil.which(tool) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
    env = {**os.environ, "IMAGE_DIR": str(LAYOUT.parent), "SOURCE_DATE_EPOCH": "0",
           "REVISION": "test", "PYTHON": sys.executable}  # fmt: skip
    subprocess.run(["bash", "docker/build-image.sh"], cwd=ROOT, env=env, check=True)


@dataclass
class Image:
    """An unpacked image: its config and a chroot that runs commands the way its config says."""

    config: dict
    rootfs: Path
    work: Path

    def env(self) -> list[str]:
        return list(self.config["config"]["Env"])

    def command(
        self, *args: str, env: dict[str, str] | None = None, entrypoint: str | None = None
    ) -> list[str]:
        cfg = self.config["config"]
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        first = [entrypoint] if entrypoint else cfg["Entrypoint"]
        return ["chroot", f"--userspec={cfg['User']}", str(self.rootfs), "/usr/bin/env", "-i",
                f"--chdir={cfg['WorkingDir']}", *self.env(), *extra, *first, *args]  # fmt: skip

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )


def manifest() -> dict:
    index = json.loads((LAYOUT / "index.json").read_text())
    (desc,) = [
        m for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == project_version()
    ]  # fmt: skip
    return blob(desc["digest"])


def blob(digest: str) -> dict:
    algo, hexdigest = digest.split(":")
    return dict(json.loads((LAYOUT / "blobs" / algo / hexdigest).read_text()))


@contextlib.contextmanager
def mounted(rootfs: Path, work: Path) -> Iterator[None]:
    """The root read-only; /proc, a few /dev nodes, /tmp and the spool mounted; all undone."""
    done: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True)
        done.append(target)

    try:
        for node in ("null", "zero", "random", "urandom"):
            (rootfs / "dev" / node).touch()
        (work / "tmp").mkdir()
        (work / "spool").mkdir()
        os.chown(work / "tmp", 10001, 10001)
        os.chown(work / "spool", 10001, 10001)
        mount("--bind", str(rootfs), target=rootfs)
        mount("-o", "remount,bind,ro", str(rootfs), target=rootfs)
        done.pop()  # the remount is undone with the bind
        mount("-t", "proc", "proc", target=rootfs / "proc")
        for node in ("null", "zero", "random", "urandom"):
            mount("--bind", f"/dev/{node}", target=rootfs / "dev" / node)
        mount("--bind", str(work / "tmp"), target=rootfs / "tmp")
        mount("--bind", str(work / "spool"), target=rootfs / SPOOL.lstrip("/"))
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "--lazy", str(target)], check=False)


@pytest.fixture(scope="module")
def built() -> None:
    build_if_missing()


@pytest.fixture(scope="module")
def image(built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("running the image needs root (chroot, mount)")
    base = tmp_path_factory.mktemp("image")
    bundle = base / "bundle"
    tag = project_version()
    subprocess.run(["umoci", "unpack", "--image", f"{LAYOUT}:{tag}", str(bundle)], check=True)
    work = base / "work"
    work.mkdir()
    rootfs = bundle / "rootfs"
    with mounted(rootfs, work):
        yield Image(config=blob(manifest()["config"]["digest"]), rootfs=rootfs, work=work)
    shutil.rmtree(base, ignore_errors=True)


def test_image_config(built: None) -> None:
    """The image runs `protege` as user 10001 and carries the OCI labels."""
    config = blob(manifest()["config"]["digest"])
    cfg = config["config"]
    assert cfg["User"] == USER
    assert cfg["Entrypoint"] == ["protege"]
    assert cfg["WorkingDir"] == "/var/lib/protege"
    assert any(e.startswith("PATH=/opt/protege/bin:") for e in cfg["Env"])
    for name in LABELS:
        assert cfg["Labels"][f"org.opencontainers.image.{name}"], name
    assert cfg["Labels"]["org.opencontainers.image.version"] == project_version()
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_image_files_owned_by_root_or_the_user(built: None) -> None:
    """Every file belongs to root or 10001; no program is setuid/setgid; nothing is writable
    by others but sticky /tmp; no device nodes (the runtime provides /dev)."""
    (layer,) = manifest()["layers"]
    algo, hexdigest = layer["digest"].split(":")
    writable = []
    with tarfile.open(LAYOUT / "blobs" / algo / hexdigest, "r:gz") as tar:
        for member in tar:
            assert member.uid in (0, 10001), (member.name, member.uid)
            assert not (member.isfile() and member.mode & 0o6000), member.name
            sticky_dir = member.isdir() and member.mode & 0o1000
            assert not (member.ischr() or member.isblk()), member.name
            if member.mode & 0o002 and not member.issym() and not sticky_dir:
                writable.append(member.name)
            if member.uid == 10001:
                assert member.name.startswith("./var/lib/protege"), member.name
    assert writable == []


def test_image_help(image: Image) -> None:
    """`protege --help` exits 0 in the image, without torch; the chart's preStop finds sleep."""
    result = image.run("--help")
    assert result.returncode == 0, result.stderr
    assert "gateway" in result.stdout and "autopilot" in result.stdout
    assert image.run("autopilot", "--help").returncode == 0
    assert not list((image.rootfs / "opt/protege/lib/python3.11/site-packages").glob("torch"))
    assert (image.rootfs / "usr/bin/sleep").exists()


def test_image_gateway_and_sidecar(image: Image) -> None:
    """The gateway answers /healthz and a chat through a host teacher; the sidecar ships it."""
    port = free_port()
    log = image.work / "gateway.log"
    with FakeTeacher() as teacher, log.open("w") as out:
        config = {
            "teacher": {"base_url": teacher.base_url},
            "server": {"host": "127.0.0.1", "port": port},
            "spool": {"dir": SPOOL},
            "store": "file:///tmp/store",
            "sidecar": {"metrics_port": 0, "retry_base_s": 0.05, "retry_max_s": 0.2},
        }
        (image.work / "tmp" / "protege.yaml").write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen(
            image.command("gateway", "--config", "/tmp/protege.yaml"),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            assert wait_healthy(url, gateway), log.read_text()
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"]
            assert len(teacher.received) == 1
            health = {"PROTEGE_HEALTHCHECK_URL": f"{url}/healthz"}
            check = image.command(env=health, entrypoint="protege-healthcheck")
            assert subprocess.run(check, check=False).returncode == 0
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
    assert gateway.returncode == 0, log.read_text()
    shipped = image.run("sidecar", "--config", "/tmp/protege.yaml", "--once")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    parquet = list((image.work / "tmp" / "store").rglob("*.parquet"))
    assert len(parquet) == 1, parquet


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return True
        time.sleep(0.2)
    return False
