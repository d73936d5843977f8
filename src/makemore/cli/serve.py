"""`makemore serve`: the web page and JSON API (makemore.serve) on a local address, run by uvicorn."""

from __future__ import annotations

import ipaddress
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from makemore.cli.common import Parser
from makemore.errors import MakemoreError

MISSING = 'makemore serve needs the serve extra: pip install "makemore[serve]"'
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> Parser:
    parser = Parser(
        prog="makemore serve",
        description="A local web page to generate from runs, score names, train, inspect and compare runs; with a "
        "JSON API (documented at /docs).",
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_OR_RUNS_DIR",
        help="run directories, or directories of runs (default: ./runs); new runs are trained into the first "
        "directory of runs given (default: ./runs)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--token",
        help="a secret every request must carry; required off loopback (default there: one is generated and printed)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="sampling processes (default: 2, one per core of a small machine)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=10.0, help="seconds one sampling or scoring request may take (default: 10)"
    )
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest training file upload (default: 50)")
    return parser


def cmd_serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401  (run_server's)

        from makemore.serve import create_app
    except ImportError:
        print(f"makemore: error: {MISSING}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        raise MakemoreError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.workers <= 64:
        raise MakemoreError(f"--workers must be in 0..64, got {args.workers}")
    if not args.time_limit > 0:
        raise MakemoreError(f"--time-limit must be > 0, got {args.time_limit}")
    if not args.max_upload_mb > 0:
        raise MakemoreError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    token = args.token
    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,256}", token):
        raise MakemoreError("--token: use 8 to 256 letters, digits, '.', '_', '~' or '-' (it goes in URLs and cookies)")
    if token is None and not is_loopback(args.host):
        token = secrets.token_urlsafe(16)  # off loopback, never without one
    paths = [Path(p) for p in args.runs] or [Path("runs")]
    for path in paths:
        if not path.exists() and path == Path("runs"):
            path.mkdir()
        elif not path.is_dir():
            raise MakemoreError(f"{path}: no such directory (give run directories or directories of runs)")
    runs_dir = next((p for p in paths if not (p / "run.json").is_file()), Path("runs"))
    import torch

    torch.set_num_threads(1)  # this process serves pages and trains; the sampling workers set their own
    app = create_app(
        paths,
        runs_dir=runs_dir,
        token=token,
        workers=args.workers,
        time_limit=args.time_limit,
        max_upload=int(args.max_upload_mb * 2**20),
        allowed_hosts=None if token else LOOPBACK_NAMES,
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"makemore serve: {address}  (API: /docs; new runs go to {runs_dir}; Ctrl-C stops)", flush=True)
    run_server(app, args.host, args.port)
    return 0


def run_server(app: Any, host: str, port: int) -> None:
    """uvicorn, told on Ctrl-C to end the page's event streams first: it waits for open connections before the
    app's shutdown, which is what stops a training job with a checkpoint."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    )
    handle_exit = server.handle_exit

    def closing(sig: int, frame: Any) -> None:
        app.state.closing = True  # event streams end at their next poll
        handle_exit(sig, frame)

    server.handle_exit = closing
    server.run()
