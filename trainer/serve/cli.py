"""``protege student``: serve the base model and the published adapters (LoRAX's API).

Registering the command imports nothing heavy; torch, transformers and the server load only
when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``student`` to the ``protege`` parser's subparsers."""
    p = sub.add_parser(
        "student", help="serve a base model and its published adapters (LoRAX's API, CPU or GPU)"
    )
    p.add_argument("--base-model", default="smollm2", help="smollm2, a model dir or a .gguf")
    p.add_argument("--store", help="store URI (default: PROTEGE_STORE or file://.protege/store)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8090, help="port to listen on")
    p.add_argument(
        "--max-adapters", type=int, default=8, help="adapters kept loaded (least recently used go)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--max-batch-size", type=int, help="requests generated together (default 8)")
    p.add_argument("--max-total-tokens", type=int, help="prompt + answer (default: the model's)")
    p.add_argument("--cache-dir", type=Path, help="downloaded adapters (default: a temp dir)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from core.logs import configure
    from trainer.serve.app import StudentServer, create_app
    from trainer.serve.settings import load_student_settings

    settings = load_student_settings(
        base_model=args.base_model,
        store=args.store,
        host=args.host,
        port=args.port,
        max_adapters=args.max_adapters,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_total_tokens=args.max_total_tokens,
        cache_dir=args.cache_dir,
    )
    configure("info")
    server = StudentServer(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        server_header=False,
        log_level="warning",
        timeout_graceful_shutdown=30,  # a backstop: shutdown ends the generations first
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C once it has shut down
        server.run()
    return 0 if server.started else 3  # 3: uvicorn's exit status for a failed start-up
