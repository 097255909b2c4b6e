"""The `finetune` command: serve, worker, db upgrade, keys, weights."""

import argparse
import os
import signal
import sys


def _serve(args: argparse.Namespace) -> int:
    # Predict's torch threads share the cores with the event loop, so idle ones should
    # sleep, not spin (GNU OpenMP reads this once, when torch loads; ACTIVE spinning
    # halved predict throughput on 2 cores). The worker keeps the default.
    worker_env = os.environ.copy()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from app.auth.service import ensure_admin
    from app.core.config import get_settings
    from app.core.db import get_sessionmaker
    from app.core.migrate import upgrade
    from app.main import announce_admin_key

    settings = get_settings()
    settings.ensure_dirs()
    upgrade()
    with get_sessionmaker()() as session:
        generated = ensure_admin(session=session, configured_key=settings.api_key)
    if generated:
        announce_admin_key(generated)
    supervisor = None
    if settings.embedded_broker and not args.no_worker:
        # Embedded mode: the same Celery worker as in a cluster, as a child process that
        # is restarted if it dies and that dies with us (see app.ops.supervisor).
        from app.ops import health
        from app.ops.supervisor import WorkerSupervisor

        supervisor = health.SUPERVISOR = WorkerSupervisor(worker_env, settings.workers_dir)
        supervisor.start()
    print(
        f"  finetune API on http://{args.host}:{args.port}  (data: {settings.data_dir};"
        f" broker: {'embedded' if settings.embedded_broker else 'external'})",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (signal.raise_signal)
    # under the handler it found. The default handler would end the process there, before
    # `finally` could stop the worker (an orphan that keeps training); this one unwinds
    # the stack as SIGINT's KeyboardInterrupt does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
    )
    try:
        _server_class()(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not orphan it
        if supervisor is not None:
            supervisor.stop()
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Event streams end at once (with a `shutdown` event the client reconnects
            # from); uvicorn would otherwise wait for them as long as their jobs run.
            from app.jobs.router import STREAMS_CLOSING

            STREAMS_CLOSING.set()
            super().handle_exit(sig, frame)

    return Server


def _worker(args: argparse.Namespace) -> int:
    # The one arrow from app/ to worker/: the command that starts the consumer. Nothing
    # else in app/ imports worker/ (tests/test_architecture.py).
    from worker.main import run

    run()
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.core.migrate import upgrade

    get_settings().ensure_dirs()
    upgrade()
    print("database is at the newest revision")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from app.auth import service
    from app.core.config import get_settings
    from app.core.db import get_sessionmaker
    from app.core.migrate import upgrade

    get_settings().ensure_dirs()
    upgrade()
    with get_sessionmaker()() as session:
        if args.keys_command == "create":
            owner, key, secret = service.create_owner_key(session=session, name=args.name)
            print(f"owner {owner.id}  key {key.id}\n{secret}")
        elif args.keys_command == "revoke":
            service.revoke_key(session=session, key_id=args.key_id)
            print(f"revoked {args.key_id}")
        else:
            for k in service.list_keys(session=session):
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}  owner={k.owner_id}  {state}  {k.name}")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from app.training.build import fetch_weights

    path = fetch_weights(args.name)
    print(f"weights for {args.name} are at {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the API (and an embedded worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.set_defaults(func=_serve)
    sub.add_parser("worker", help="start a Celery worker").set_defaults(func=_worker)
    db = sub.add_parser("db", help="database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=_db_upgrade)
    keys = sub.add_parser("keys", help="API keys (each new key is its own owner)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create")
    create.add_argument("name")
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("key_id")
    keys_sub.add_parser("list")
    keys.set_defaults(func=_keys)
    weights = sub.add_parser("weights", help="pretrained weights")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_sub.add_parser("fetch", help="download torchvision weights (needs network)")
    fetch.add_argument("name")
    weights.set_defaults(func=_weights)
    from app.client.cli import add_commands  # train, predict, datasets, jobs, models, webhooks

    add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
