"""``qtts serve``: argument parsing and the uvicorn runner (imports FastAPI only when serving)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options (model options are added by the CLI)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: $QTTS_API_KEY "
                   "if set, else no authentication)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="streams advanced together per frame step (default: 8 on CPU; on CUDA 32, or as many "
                        "streams' caches as half the free GPU memory holds)")
    p.add_argument("--max-waiting", type=int, default=64, help="requests queued for a slot before 503")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds a request may wait for a slot")
    p.add_argument("--text-timeout", type=float, default=60.0,
                   help="seconds a WebSocket utterance may wait for more text before it is cancelled")
    p.add_argument("--max-input-chars", type=int, default=4096)
    p.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--clone-model", help="a Base checkpoint (folder or repo id) loaded beside --model to speak clone "
                   "voices: locked designed voices (POST /v1/audio/voices lock=true) and saved clones")
    p.add_argument("--data-dir", help="voice library folder (default $QTTS_HOME/voices or ~/.cache/qtts/voices)")
    p.add_argument("--model-name", help="model name reported by /v1/models (default: the checkpoint's folder name)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="do not build the compiled / graphed frame step for every batch size before serving "
                        "(the first requests then pay for it)")


def settings_from_args(args: argparse.Namespace):
    """``ServerSettings`` from parsed ``serve`` arguments."""
    import os

    from .settings import ServerSettings, default_data_dir

    quantize = getattr(args, "quantize", None)
    quantize = None if quantize in (None, "none") else quantize
    return ServerSettings(
        model=args.model, clone_model=getattr(args, "clone_model", None), kind=args.kind or "custom_voice",
        device=args.device, dtype=args.dtype, quantize=quantize,
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("QTTS_API_KEY") or None,
        max_input_chars=args.max_input_chars, max_upload_bytes=args.max_upload_bytes, max_batch=args.max_batch,
        max_waiting=args.max_waiting, wait_timeout=args.wait_timeout, text_timeout=args.text_timeout,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(), model_name=args.model_name,
        accel=getattr(args, "accel", None), warmup=getattr(args, "warmup", True),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run uvicorn until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"error: the server needs its extra dependencies ({e}); pip install 'qtts[server]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from_args(args)
    app = create_app(settings)
    state = app.state.qtts
    clone = f" + clone model {settings.clone_model}" if state.clone_tts is not None else ""
    print(f"qtts: serving {state.model_name} ({state.tts.kind}){clone} on "
          f"http://{settings.host}:{settings.port}", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False)
    return 0
