"""The gateway's HTTP surface: FastAPI app, lifespan-managed resources, one error boundary."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
import structlog
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response

from core.feedback import feedback_spool
from core.ids import new_id
from core.redact import Redactor
from core.store import Store, open_store
from gateway.adapters import References
from gateway.admin import Admin, add_admin_routes
from gateway.admin_autopilot import AutopilotAdmin, add_autopilot_routes
from gateway.asgi import REQUEST_ID, FastLane, error_response, json_response
from gateway.auth import KeyCheck
from gateway.background import Background
from gateway.capture import Exchange, RecordEncoder
from gateway.config import GatewaySettings, RouteConfig
from gateway.dispatch import Dispatch
from gateway.drift import DriftMonitor
from gateway.errors import ApiError, ServiceUnavailable, UpstreamError, error_body
from gateway.feedback import Feedback, FeedbackDesk, FeedbackEncoder
from gateway.intake import ENDPOINTS, Intake
from gateway.judged import ShadowJudge
from gateway.live import LiveReporter
from gateway.metrics import Metrics, TaskLabels, exposition, multiprocess_dir
from gateway.monitor import Monitor
from gateway.policy import RolloutPolicy
from gateway.proxy import Capture, Proxy, TeacherBackend
from gateway.rollouts import Rollouts
from gateway.routes import RouteTable
from gateway.shadow import Shadow
from gateway.spool import SpoolWriter
from gateway.student import StudentBackend
from gateway.upstream import Upstream

log = structlog.get_logger("gateway")


@dataclass
class Gateway:
    """Everything a request needs, built once from the settings."""

    settings: GatewaySettings
    metrics: Metrics
    intake: Intake
    routes: RouteTable
    teacher: TeacherBackend
    student: StudentBackend | None
    spool: SpoolWriter[Exchange]
    proxy: Proxy
    store: Store
    background: Background
    rollouts: Rollouts
    drift: DriftMonitor
    dispatch: Dispatch
    feedback: FeedbackDesk
    feedback_spool: SpoolWriter[Feedback]
    judging: ShadowJudge
    live: LiveReporter
    _loops: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(
        cls, settings: GatewaySettings, metrics: Metrics | None = None, replica: str | None = None
    ) -> Gateway:
        """``replica``: this process's name in the live views (default: the pod's name, else
        a new id); each worker of ``protege gateway --workers N`` has its own."""
        metrics = metrics or Metrics()
        routes = RouteTable(settings.routes)
        labels = TaskLabels(routes.tasks, settings.metrics.max_dynamic_tasks)
        t, s = settings.teacher, settings.student
        teacher = TeacherBackend(Upstream.configured("teacher", t.base_url, t, metrics))
        student = None
        if s.base_url is not None:
            upstream = Upstream.configured("student", s.base_url, s, metrics)
            student = StudentBackend(upstream, s.adapter_prefix)
        redactor = Redactor.from_config(settings.redaction)
        spool: SpoolWriter[Exchange] = SpoolWriter(
            settings.spool, RecordEncoder(redactor, metrics), metrics
        )
        keys = KeyCheck(k.get_secret_value() for k in settings.api_keys)
        salt = settings.hash_salt.get_secret_value().encode()
        intake = Intake(keys, routes, labels, salt, settings.max_body_bytes)
        feedback, fb_spool = _feedback_desk(settings, keys, salt, redactor, metrics, labels)
        proxy = Proxy(Capture(spool, metrics, settings.logging.access_log), metrics)
        store = open_store(settings.store)
        background = Background()
        r = settings.rollouts
        rollouts = Rollouts(settings.rollouts_by_task(), store, metrics, labels)
        drift = DriftMonitor(metrics, r.drift_queue)
        references = References(store, drift, background, labels)
        monitor = Monitor(rollouts, metrics, background, labels, store=store)
        # The caps on background calls are the gateway's (a pod's, a host's): its workers
        # split them evenly, as the kernel spreads the connections over them.
        share = 1 / (settings.server.workers or 1)
        judging = ShadowJudge(
            settings.judge_settings(), r, monitor, metrics, labels, redactor, share=share
        )
        shadow = None
        if student is not None:
            shadow = Shadow(
                student, proxy.capture, monitor, metrics, background,
                r.shadow_concurrency, r.shadow_timeout_s, judging, share=share,
            )  # fmt: skip
        dispatch = Dispatch(
            proxy, teacher, student, rollouts, monitor, shadow, drift, references, background
        )
        # What this replica sees of each student (drift, the challenge), for the autopilot.
        live = LiveReporter(
            store, rollouts.students, drift.score, monitor.duel,
            replica or os.environ.get("PROTEGE_POD_NAME") or new_id(), r.sync_interval_s,
        )  # fmt: skip
        return cls(
            settings, metrics, intake, routes, teacher, student, spool, proxy, store,
            background, rollouts, drift, dispatch, feedback, fb_spool, judging, live,
        )  # fmt: skip

    @property
    def monitor(self) -> Monitor:
        """The task monitors: checks, guardrails and the challenger's duel."""
        return self.dispatch.monitor

    @property
    def upstreams(self) -> list[Upstream]:
        return [b.upstream for b in (self.teacher, self.student) if b is not None]

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.start)
        await asyncio.to_thread(self.feedback_spool.start)
        for upstream in self.upstreams:
            await upstream.start()
        await self.store.start()
        if self.student is not None:
            await self.judging.start(self.store)
        self.drift.start()
        await self.rollouts.load()
        self.rollouts.subscribe(self.dispatch.references.changed)
        interval = self.settings.rollouts.sync_interval_s
        self._loops.append(asyncio.create_task(self.rollouts.sync_forever(interval)))
        # A challenger past its deadline is retired on this tick, traffic or not.
        self._loops.append(asyncio.create_task(self.monitor.expire_forever(interval)))
        self._loops.append(asyncio.create_task(self.live.run_forever()))
        if not self.settings.api_keys:
            log.warning("no gateway API keys configured: any client is accepted")
        log.info(
            "gateway started",
            teacher=self.teacher.upstream.base_url,
            student=self.student.upstream.base_url if self.student else None,
            spool=str(self.settings.spool.dir),
            routes=self.routes.aliases,
            admin=self.settings.rollouts.admin_token is not None,
        )

    async def stop(self) -> None:
        await self.live.aclose()  # this replica's views go before it does
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # Shadow records waiting for verdicts are written (pending) with the rest of the
        # shadow work; then the judge stops.
        self.judging.release()
        await self.background.aclose(self.settings.rollouts.shadow_timeout_s)
        await self.judging.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()
        await asyncio.to_thread(self.drift.stop)
        await self.store.aclose()
        await self.spool.aclose()
        await self.feedback_spool.aclose()
        log.info("gateway stopped")

    async def forward(self, request: Request, path: str) -> Response:
        """Serve one request to a forwarding endpoint (``path`` is a key of ``ENDPOINTS``)."""
        request_id = new_id()
        request.scope[REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        inc = await self.intake.admit(request, path, request_id)
        self.feedback.recent.add(request_id, inc.task)
        structlog.contextvars.bind_contextvars(task=inc.task)
        if self.settings.spool.on_full == "reject" and self.spool.full:
            raise ServiceUnavailable("the capture spool is full; try again shortly")
        return await self.dispatch.answer(inc)


def _feedback_desk(
    settings: GatewaySettings,
    keys: KeyCheck,
    salt: bytes,
    redactor: Redactor,
    metrics: Metrics,
    labels: TaskLabels,
) -> tuple[FeedbackDesk, SpoolWriter[Feedback]]:
    """The feedback endpoint and its spool (``<spool.dir>/feedback/``, strict: a row the
    client was told is kept is written, or the request fails)."""
    config = settings.spool.model_copy(update={"dir": feedback_spool(settings.spool.dir)})
    spool: SpoolWriter[Feedback] = SpoolWriter(
        config, FeedbackEncoder(redactor), metrics.feedback_spool, strict=True
    )
    desk = FeedbackDesk(
        settings.feedback, keys=keys, salt=salt, max_body_bytes=settings.max_body_bytes,
        spool=spool, store_uri=settings.store, metrics=metrics, task_labels=labels,
    )  # fmt: skip
    return desk, spool


def create_app(
    settings: GatewaySettings, metrics: Metrics | None = None, replica: str | None = None
) -> FastLane:
    """The gateway as an ASGI app: FastAPI, fronted by the fast lane for forwarded requests."""
    gw = Gateway.build(settings, metrics, replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    # No redirects between "/x" and "/x/": an unknown path is a 404 in the OpenAI shape.
    app = FastAPI(
        title="Protégé gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.gateway = gw
    _add_error_handlers(app)
    _add_routes(app, gw)
    token = settings.rollouts.admin_token
    if token is not None:
        aliases: dict[str, list[str]] = {}
        for route in settings.routes:
            aliases.setdefault(route.task, []).append(route.alias)
        admin = Admin(
            token.get_secret_value(), gw.rollouts, gw.store, gw.student is not None, aliases
        )
        add_admin_routes(app, admin)
        add_autopilot_routes(app, AutopilotAdmin(admin.authorize, gw.store, gw.background.spawn))
    return FastLane(app, gw.forward, {f"/v1{path}": path for path in ENDPOINTS})


def _add_routes(app: FastAPI, gw: Gateway) -> None:
    # Registered so that the OpenAPI schema lists them; FastLane serves them in production.
    for path in ENDPOINTS:
        app.add_api_route(f"/v1{path}", _endpoint(gw.forward, path), methods=["POST"])

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        return await gw.feedback.accept(request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        gw.intake.authorize(request)
        data = [_route_model(r, gw.rollouts.policy(r.task)) for r in gw.settings.routes]
        seen = set(gw.routes.aliases)
        teacher = gw.teacher.upstream
        try:
            async with teacher.request("GET", "/models") as resp:
                body = await teacher.read(resp)
            listed = orjson.loads(body).get("data", []) if resp.status == 200 else []
            data += [m for m in listed if isinstance(m, dict) and m.get("id") not in seen]
        except (UpstreamError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("teacher model list unavailable", error=str(exc))
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        if gw.settings.spool.on_full == "reject" and gw.spool.full:
            return Response(b'{"status":"spool full"}', 503, media_type="application/json")
        return Response(b'{"status":"ready"}', media_type="application/json")

    registry = exposition(gw.metrics.registry)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(await _exposition(registry), media_type=CONTENT_TYPE_LATEST)


async def _exposition(registry: CollectorRegistry) -> bytes:
    """The metrics page; every worker's files are read off the event loop in multiprocess
    mode."""
    if multiprocess_dir() is None:
        return generate_latest(registry)
    return await asyncio.to_thread(generate_latest, registry)


def _route_model(route: RouteConfig, policy: RolloutPolicy | None) -> dict[str, object]:
    """A route alias as a ``/v1/models`` entry, with its task and its rollout in force."""
    mode, adapter = (policy.mode, policy.adapter) if policy else ("teacher", None)
    return {
        "id": route.alias,
        "object": "model",
        "created": 0,
        "owned_by": "protege",
        "protege": {"task": route.task, "mode": mode, "adapter": adapter},
    }


def _endpoint(
    forward: Callable[[Request, str], Awaitable[Response]], path: str
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for ``path`` with the one parameter FastAPI should inject: the request."""

    async def endpoint(request: Request) -> Response:
        return await forward(request, path)

    endpoint.__name__ = "forward_" + path.strip("/").replace("/", "_")
    return endpoint


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc, request.scope)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else None
        body = error_body(str(exc.detail), "invalid_request_error", None, code)
        return json_response(body, exc.status_code, request.scope)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.scope)
