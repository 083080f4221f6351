"""The Dockerfiles teams build in their CI, read as Docker reads them (``dockerfile-parse``):
what they copy exists and is in their build context, the images run as user 10001 with a
health check and the OCI labels, and their locks pin every dependency the project declares.
The slim image built without Docker is run in ``test_image.py``."""

from __future__ import annotations

import fnmatch
import io
import re
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Dockerfile -> its lock and the requirements (pyproject's) the lock must satisfy.
IMAGES = {
    "Dockerfile": ("requirements.lock", ()),
    "Dockerfile.train": ("requirements-train.lock", ("train",)),
}
OCI_KEYS = ("title", "description", "version", "source", "licenses", "created", "revision")
OCI_LABELS = {f"org.opencontainers.image.{k}" for k in OCI_KEYS}
# Installed by the Dockerfile from PyTorch's index for the chosen variant, not from the lock.
NOT_LOCKED = {"torch"}


def parsed(name: str) -> DockerfileParser:
    # From memory: a path not named "Dockerfile" would be taken as a directory holding one.
    return DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()), env_replace=True)


def final_stage(name: str) -> list[dict[str, str]]:
    """The instructions after the last FROM: what the image is."""
    structure = parsed(name).structure
    last = max(i for i, s in enumerate(structure) if s["instruction"] == "FROM")
    return [s for s in structure[last + 1 :] if s["instruction"] != "COMMENT"]


def copied(name: str) -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions name (not --from a stage)."""
    sources: list[str] = []
    for step in parsed(name).structure:
        if step["instruction"] != "COPY":
            continue
        words = [w for w in step["value"].split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in step["value"].split()):
            continue
        sources += words[:-1]
    return sources


def in_context(name: str, path: str) -> bool:
    """Whether ``path`` is in the build context ``<Dockerfile>.dockerignore`` leaves (its last
    matching pattern decides, a ``!`` one including; a directory's pattern covers its files)."""
    keep = True
    for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            keep = include
    return keep


def lock(name: str) -> dict[str, str]:
    """A lock's pins (name -> version); every one must carry sha256 hashes."""
    pins: dict[str, str] = {}
    text = (DOCKER / name).read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split(" ", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        assert "==" in first, f"{name}: {first} is not pinned"
        assert "--hash=sha256:" in block, f"{name}: {first} has no hash"
        package, version = first.split("==")
        pins[canonicalize_name(package.split("[")[0])] = version
    return pins


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = PYPROJECT["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(r) for r in names]


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_runs_as_10001_with_a_health_check_and_oci_labels(name: str) -> None:
    steps = {s["instruction"]: s["value"] for s in final_stage(name)}
    assert steps["USER"] == "10001:10001"
    assert 'CMD ["protege-healthcheck"]' in steps["HEALTHCHECK"]
    assert steps["ENTRYPOINT"] == '["protege"]'
    labels = parsed(name).labels
    assert set(labels) >= OCI_LABELS and all(labels[k] for k in OCI_LABELS)
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]


@pytest.mark.parametrize("name", IMAGES)
def test_the_base_image_is_pinned_to_the_python_the_project_needs(name: str) -> None:
    bases = set(parsed(name).parent_images)
    assert bases == {"python:3.11-slim-bookworm"}


@pytest.mark.parametrize("name", IMAGES)
def test_what_the_dockerfile_copies_exists_and_is_in_its_context(name: str) -> None:
    sources = copied(name)
    for source in sources:
        assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"
        assert in_context(name, source), f"{name} copies {source}; its .dockerignore drops it"
    assert not in_context(name, "tests/conftest.py") and not in_context(name, ".venv/bin/python")


@pytest.mark.parametrize("name", IMAGES)
def test_every_package_the_project_ships_is_copied(name: str) -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()
                and any(fnmatch.fnmatchcase(d.name, p) for p in patterns)}  # fmt: skip
    assert packages == {"core", "gateway", "sidecar", "trainer", "protege"}
    assert packages <= set(copied(name)) and "pyproject.toml" in copied(name)


@pytest.mark.parametrize("name", IMAGES)
def test_the_lock_pins_every_declared_dependency_within_its_range(name: str) -> None:
    lock_file, extras = IMAGES[name]
    pins = lock(lock_file)
    for requirement in declared(extras):
        package = canonicalize_name(requirement.name)
        if package in NOT_LOCKED:
            continue
        assert package in pins, f"{lock_file} lacks {requirement}"
        assert requirement.specifier.contains(pins[package], prereleases=True), (
            f"{lock_file} pins {package}=={pins[package]}, outside {requirement}"
        )
    assert not NOT_LOCKED & set(pins)


def test_the_train_image_installs_the_torch_the_project_pins() -> None:
    (torch,) = [r for r in declared(("train",)) if r.name == "torch"]
    args = {k: v for k, _, v in (s["value"].partition("=") for s in
            parsed("Dockerfile.train").structure if s["instruction"] == "ARG")}  # fmt: skip
    assert str(torch.specifier) == f"=={args['TORCH_VERSION']}"
    assert args["TORCH_VARIANT"] == "cpu"
