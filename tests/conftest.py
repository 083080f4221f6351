"""Shared fixtures: a fake teacher and a gateway, each a real server on a loopback port."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway.app import Gateway, create_app
from gateway.config import GatewaySettings, load_settings
from gateway.metrics import Metrics
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, wait_for

# A gateway started by a test is a single process (``--workers 1``), whatever the machine's
# cores: each test says what it checks of one gateway; tests/test_gateway_workers.py sets its
# own count.
os.environ.setdefault("PROTEGE_GATEWAY_WORKERS", "1")


class RunningGateway:
    """The gateway app served by uvicorn in a background thread."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.app = create_app(settings, self.metrics)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, http="httptools", lifespan="on", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningGateway:
        self._thread.start()
        if not wait_for(lambda: self.server.started, 10):
            raise RuntimeError("gateway did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    @property
    def gateway(self) -> Gateway:
        """The running app's ``Gateway`` (its rollouts, dispatch and monitors)."""
        gateway: Gateway = self.app.app.state.gateway  # type: ignore[attr-defined]
        return gateway

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10) -> bool:
        """Whether ``condition`` came true within ``timeout`` seconds (work done in the
        background: shadow calls, checks, rollout changes)."""
        return wait_for(condition, timeout)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher() as fake:
        yield fake


@pytest.fixture
def make_gateway(tmp_path: Path, teacher: FakeTeacher) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        env = {
            "PROTEGE_TEACHER_BASE_URL": teacher.base_url,
            "PROTEGE_TEACHER_API_KEY": "teacher-secret",
            "PROTEGE_SPOOL_DIR": str(tmp_path / "spool"),
            "PROTEGE_STORE": f"file://{tmp_path / 'store'}",
        }
        settings = load_settings(env=env, **overrides)
        gw = RunningGateway(settings).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def lorax() -> Iterator[FakeLorax]:
    """A LoRAX stand-in for the student (``tests.fake_lorax``)."""
    with FakeLorax() as fake:
        yield fake


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()


@pytest.fixture(autouse=True, scope="session")
def _quiet_servers() -> None:
    """moto's server logs every request; tests only want its warnings."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the module: on tiny models threads only add overhead, and on
    a busy two-core machine they stall for seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
