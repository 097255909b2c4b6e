"""The client commands of `finetune`: train, predict, datasets, jobs, models, webhooks.

Built on the SDK (app.client.sdk), so there is one client. Exit codes: 0 the job
succeeded (or the command did what it said), 1 the job failed or was cancelled, 2 usage,
connection or auth errors (and every other error answer of the server), 130 detached
by Ctrl+C. An error is one line on stderr with the server's code and message.
With --json the last line of stdout is one JSON object; progress then goes to stderr.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 130
TERMINAL = ("succeeded", "failed", "cancelled")


# --- output ----------------------------------------------------------------------------------


class Out:
    """Where a command writes: results to stdout; with --json, human lines to stderr."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.human = sys.stderr if as_json else sys.stdout

    def say(self, line: str) -> None:
        print(line, file=self.human, flush=True)

    def result(self, obj, human: str | None = None) -> None:
        if self.as_json:
            data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
            print(json.dumps(data), flush=True)
        elif human is not None:
            print(human, flush=True)


def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _eta(seconds) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _stage(report: dict) -> str:
    """The strategy's current stage, from an epoch report."""
    if report.get("phase") == "search":
        return f"search, candidate {report.get('candidate', '?')}"
    if report.get("stage") == "probe":
        return "exact linear probe"
    groups = report.get("schedule") or []
    trainable = [g["group"] for g in groups if g.get("trainable")]
    if not groups:
        return ""
    if len(trainable) == len(groups):
        return "all layers"
    if trainable == ["head"]:
        return "head only"
    blocks = len([g for g in trainable if g.startswith("block")])
    return f"head + top {blocks} block{'s' if blocks != 1 else ''}"


def _epoch_line(report: dict) -> str:
    if report.get("stage") == "probe":  # the head fitted exactly before any epoch (LP-FT)
        return (
            f"probe  C {_fmt(report.get('C'))}"
            f"  train_loss {_fmt(report.get('train_loss'))}"
            f"  val_loss {_fmt(report.get('val_loss'))}"
            f"  val_accuracy {_fmt(report.get('val_accuracy'))}"
        )
    return (
        f"epoch {report.get('epoch')}/{report.get('epochs')}"
        f"  train_loss {_fmt(report.get('train_loss'))}"
        f"  val_loss {_fmt(report.get('val_loss'))}"
        f"  val_accuracy {_fmt(report.get('val_accuracy'))}"
        f"  eta {_eta(report.get('eta_seconds'))}  [{_stage(report)}]"
    )


class PlainProgress:
    """Not a TTY: one line per epoch and per status change."""

    def __init__(self, out: Out):
        self.out = out

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def event(self, ev) -> None:
        if ev.type == "epoch":
            self.out.say(_epoch_line(ev.data))
        elif ev.type == "status":
            self.out.say(f"status: {ev.data.get('status')}")


class LiveProgress:
    """A TTY: one live rich progress bar, fed by the event stream."""

    def __init__(self, out: Out, job):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("epoch {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stage]}"),
            console=Console(file=out.human),
            transient=False,
        )
        self.task = self.progress.add_task(
            job.status,
            total=job.progress.epochs or job.spec.get("epochs") or 1,
            completed=job.progress.epoch,
            loss="-",
            val="-",
            eta="-",
            stage="",
        )

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def event(self, ev) -> None:
        d = ev.data
        if ev.type == "epoch":
            self.progress.update(
                self.task,
                total=d.get("epochs"),
                completed=d.get("epoch"),
                loss=_fmt(d.get("train_loss")),
                val=f"acc {_fmt(d.get('val_accuracy'))}",
                eta=_eta(d.get("eta_seconds")),
                stage=_stage(d),
            )
        elif ev.type == "status":
            self.progress.update(self.task, description=str(d.get("status")))


def _follow(client, job_id: str, out: Out) -> int:
    """Show the job's progress until it ends; its exit code. Ctrl+C detaches."""
    job = client.jobs.get(job_id)
    tty = out.human.isatty()
    try:
        with LiveProgress(out, job) if tty else PlainProgress(out) as progress:
            for ev in client.jobs.follow(job_id):
                progress.event(ev)
    except KeyboardInterrupt:
        out.say(
            f"detached; job {job_id} keeps running. Follow it again: "
            f"finetune jobs events {job_id} --follow   (stop it: finetune jobs cancel {job_id})"
        )
        return EXIT_DETACHED
    job = client.jobs.get(job_id)
    if job.status == "succeeded":
        m = job.metrics
        out.say(
            f"job {job.id} succeeded: model {job.model_id}"
            f"  test accuracy {_fmt(m.get('test_accuracy'))}"
            f"  test macro F1 {_fmt(m.get('test_macro_f1'))}"
            f"  (best epoch {m.get('best_epoch', '-')})"
        )
    else:
        why = f": {job.error.code}: {job.error.message}" if job.error else ""
        print(f"error: job {job.id} {job.status}{why}", file=sys.stderr, flush=True)
    out.result(job)
    return EXIT_OK if job.status == "succeeded" else EXIT_JOB_FAILED


# --- commands --------------------------------------------------------------------------------


def _client(args):
    from app.client.sdk import Client

    return Client(args.url, args.key)


def _spec(args) -> dict:
    spec = {}
    for field in (
        "strategy",
        "epochs",
        "image_size",
        "learning_rate",
        "batch_size",
        "trainable_blocks",
    ):
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    if getattr(args, "spec", None):
        try:
            extra = json.loads(args.spec)
        except ValueError as exc:
            raise SystemExit(_usage(f"--spec: not JSON: {exc}")) from None
        if not isinstance(extra, dict):
            raise SystemExit(_usage("--spec: a JSON object of job fields"))
        spec.update(extra)
    return spec


def _usage(message: str) -> int:
    print(f"error: usage_error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _dataset_line(ds) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in list(ds.class_counts.items())[:12])
    return (
        f"dataset {ds.id} ({ds.name}): {ds.task}, {ds.num_samples} samples, "
        f"{len(ds.classes)} classes [{counts}], splits {ds.splits}"
    )


def cmd_train(args, out: Out) -> int:
    client = _client(args)
    out.say(f"uploading {args.path} ...")
    ds = client.datasets.upload(
        args.path,
        name=args.name,
        task=args.task,
        label_column=args.label_column,
        text_column=args.text_column,
    )
    out.say(_dataset_line(ds))
    job = client.jobs.create(dataset_id=ds.id, base_model=args.base_model, **_spec(args))
    out.say(f"job {job.id} {job.status}")
    if args.follow:
        return _follow(client, job.id, out)
    out.say(f"follow it: finetune jobs events {job.id} --follow")
    out.result(job, job.id)
    return EXIT_OK


def cmd_predict(args, out: Out) -> int:
    from app.client.sdk import read_csv_inputs

    given = [bool(args.files), bool(args.text), bool(args.csv)]
    if sum(given) != 1:
        return _usage("predict takes image FILEs, or --text (repeatable), or --csv FILE")
    client = _client(args)
    if args.files:
        missing = [f for f in args.files if not os.path.isfile(f)]
        if missing:
            return _usage(f"{missing[0]}: no such file")
        resp = client.models.predict(args.model_id, files=args.files, top_k=args.top_k)
        names = args.files
    elif args.text:
        resp = client.models.predict(args.model_id, inputs=args.text, top_k=args.top_k)
        names = args.text
    else:
        if not os.path.isfile(args.csv):
            return _usage(f"{args.csv}: no such file")
        model = client.models.get(args.model_id)
        inputs = read_csv_inputs(args.csv, task=model.task, text_column=args.text_column)
        resp = client.models.predict(args.model_id, inputs=inputs, top_k=args.top_k)
        names = [f"row {i + 1}" for i in range(len(inputs))]
    lines = []
    for name, p in zip(names, resp.predictions, strict=False):
        others = "  ".join(f"{t.label} {t.score:.3f}" for t in p.top_k[1:])
        lines.append(f"{name}: {p.label} {p.score:.3f}" + (f"   ({others})" if others else ""))
    out.result(resp, "\n".join(lines))
    return EXIT_OK


def cmd_datasets(args, out: Out) -> int:
    client = _client(args)
    c = args.datasets_command
    if c == "upload":
        ds = client.datasets.upload(
            args.path,
            name=args.name,
            task=args.task,
            label_column=args.label_column,
            text_column=args.text_column,
        )
        out.result(ds, _dataset_line(ds))
    elif c == "list":
        page = client.datasets.list(limit=args.limit, offset=args.offset)
        out.result(page, "\n".join(_dataset_line(d) for d in page.items) or "no datasets")
    elif c == "get":
        ds = client.datasets.get(args.id)
        out.result(ds, _dataset_line(ds))
    else:
        client.datasets.delete(args.id)
        out.result({"id": args.id, "deleted": True}, f"deleted {args.id}")
    return EXIT_OK


def _job_line(job) -> str:
    p = job.progress
    extra = f"  model {job.model_id}" if job.model_id else ""
    if job.error:
        extra += f"  error {job.error.code}: {job.error.message}"
    return (
        f"{job.id}  {job.status:<9}  {job.spec.get('base_model')}/{job.spec.get('strategy')}"
        f"  epoch {p.epoch}/{p.epochs}{extra}"
    )


def cmd_jobs(args, out: Out) -> int:
    client = _client(args)
    c = args.jobs_command
    if c == "create":
        job = client.jobs.create(
            dataset_id=args.dataset_id,
            base_model=args.base_model,
            idempotency_key=args.idempotency_key,
            **_spec(args),
        )
        if args.follow:
            out.say(f"job {job.id} {job.status}")
            return _follow(client, job.id, out)
        out.result(job, _job_line(job))
    elif c == "list":
        page = client.jobs.list(status=args.status, limit=args.limit, offset=args.offset)
        out.result(page, "\n".join(_job_line(j) for j in page.items) or "no jobs")
    elif c == "get":
        job = client.jobs.get(args.id)
        out.result(job, _job_line(job))
    elif c == "cancel":
        job = client.jobs.cancel(args.id)
        out.result(job, _job_line(job))
    else:
        if args.follow:
            return _follow(client, args.id, out)
        events = client.jobs.events(args.id, after=args.after)
        lines = [
            f"{e.id}  {e.created_at:%H:%M:%S}  "
            + (_epoch_line(e.data) if e.type == "epoch" else f"{e.type} {json.dumps(e.data)}")
            for e in events
        ]
        out.result([e.model_dump(mode="json") for e in events], "\n".join(lines) or "no events")
    return EXIT_OK


def _model_line(m) -> str:
    return (
        f"{m.id}  {m.task}  {m.base_model}  accuracy {_fmt(m.metrics.get('accuracy'))}"
        f"  macro F1 {_fmt(m.metrics.get('macro_f1'))}  classes {len(m.classes)}"
    )


def cmd_models(args, out: Out) -> int:
    client = _client(args)
    c = args.models_command
    if c == "list":
        page = client.models.list(limit=args.limit, offset=args.offset)
        out.result(page, "\n".join(_model_line(m) for m in page.items) or "no models")
    elif c == "get":
        m = client.models.get(args.id)
        out.result(m, _model_line(m))
    else:
        suffix = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
        dest = args.output or f"{args.id}{suffix.get(args.format, '')}"
        path = client.models.export(args.id, dest, format=args.format)
        out.result({"id": args.id, "format": args.format, "path": str(path)}, str(path))
    return EXIT_OK


def cmd_webhooks(args, out: Out) -> int:
    client = _client(args)
    c = args.webhooks_command
    if c == "create":
        wh = client.webhooks.create(args.endpoint_url, events=args.event)
        out.result(
            wh, f"{wh.id}  {wh.url}  {','.join(wh.events)}\nsecret (shown once): {wh.secret}"
        )
    elif c == "list":
        page = client.webhooks.list()
        lines = [f"{w.id}  {w.url}  {','.join(w.events)}" for w in page.items]
        out.result(page, "\n".join(lines) or "no webhooks")
    elif c == "delete":
        client.webhooks.delete(args.id)
        out.result({"id": args.id, "deleted": True}, f"deleted {args.id}")
    else:
        page = client.webhooks.deliveries(args.id)
        lines = [
            f"{d.id}  {d.event_type}  {d.status}  attempts {d.attempts}  "
            + " ".join(str(a.status_code or a.error) for a in d.log)
            for d in page.items
        ]
        out.result(page, "\n".join(lines) or "no deliveries")
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--url",
        default=os.environ.get("FINETUNE_URL", "http://127.0.0.1:8000"),
        help="the server (env FINETUNE_URL)",
    )
    p.add_argument(
        "--key", default=os.environ.get("FINETUNE_API_KEY"), help="API key (env FINETUNE_API_KEY)"
    )
    p.add_argument("--json", action="store_true", help="the last stdout line is one JSON object")
    return p


def _upload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name")
    p.add_argument(
        "--task", choices=["image_classification", "text_classification", "tabular_classification"]
    )
    p.add_argument("--label-column")
    p.add_argument("--text-column")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["full", "partial", "layerwise", "progressive", "auto"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--trainable-blocks", type=int)
    p.add_argument("--spec", help="more job fields as a JSON object")


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)


def add_commands(sub) -> None:
    """Register the client commands on `finetune`'s subparsers."""
    common = _common()

    def leaf(parent, name: str, handler: Callable, help: str | None = None):
        p = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=lambda args, h=handler: run(h, args))
        return p

    train = leaf(sub, "train", cmd_train, "upload PATH and fine-tune a model on it")
    train.add_argument("path", help="a folder of class folders, a ZIP/tar archive, or a CSV")
    train.add_argument("--base-model", required=True)
    _upload_args(train)
    _spec_args(train)
    train.add_argument("--follow", action="store_true", help="show progress until it ends")

    predict = leaf(sub, "predict", cmd_predict, "predict with a model")
    predict.add_argument("model_id")
    predict.add_argument("files", nargs="*", metavar="FILE", help="images")
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--text", action="append", help="a text input (repeatable)")
    predict.add_argument("--csv", help="a CSV of inputs (text or tabular models)")
    predict.add_argument("--text-column", default="text", help="the CSV's text column")

    datasets = sub.add_parser("datasets", help="datasets on the server")
    ds = datasets.add_subparsers(dest="datasets_command", required=True)
    up = leaf(ds, "upload", cmd_datasets)
    up.add_argument("path")
    _upload_args(up)
    _paging(leaf(ds, "list", cmd_datasets))
    leaf(ds, "get", cmd_datasets).add_argument("id")
    leaf(ds, "delete", cmd_datasets).add_argument("id")

    jobs = sub.add_parser("jobs", help="fine-tuning jobs")
    js = jobs.add_subparsers(dest="jobs_command", required=True)
    create = leaf(js, "create", cmd_jobs)
    create.add_argument("--dataset-id", required=True)
    create.add_argument("--base-model", required=True)
    create.add_argument("--idempotency-key")
    create.add_argument("--follow", action="store_true")
    _spec_args(create)
    lst = leaf(js, "list", cmd_jobs)
    lst.add_argument("--status", choices=["queued", "running", *TERMINAL])
    _paging(lst)
    leaf(js, "get", cmd_jobs).add_argument("id")
    leaf(js, "cancel", cmd_jobs).add_argument("id")
    events = leaf(js, "events", cmd_jobs)
    events.add_argument("id")
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--follow", action="store_true", help="live, until the job ends")

    models = sub.add_parser("models", help="trained models")
    ms = models.add_subparsers(dest="models_command", required=True)
    _paging(leaf(ms, "list", cmd_models))
    leaf(ms, "get", cmd_models).add_argument("id")
    export = leaf(ms, "export", cmd_models)
    export.add_argument("id")
    export.add_argument(
        "--format", default="safetensors", choices=["safetensors", "torchscript", "onnx"]
    )
    export.add_argument("-o", "--output", help="file to write (default: <id>.<ext>)")

    webhooks = sub.add_parser("webhooks", help="signed job notifications")
    ws = webhooks.add_subparsers(dest="webhooks_command", required=True)
    wc = leaf(ws, "create", cmd_webhooks)
    wc.add_argument("endpoint_url", metavar="URL")
    wc.add_argument(
        "--event",
        action="append",
        choices=["job.succeeded", "job.failed", "job.cancelled", "job.epoch"],
        help="repeatable; default: the three end states",
    )
    leaf(ws, "list", cmd_webhooks)
    leaf(ws, "delete", cmd_webhooks).add_argument("id")
    leaf(ws, "deliveries", cmd_webhooks).add_argument("id")


def run(handler: Callable, args) -> int:
    """Run one client command: every failure is one line on stderr and an exit code."""
    from app.client.sdk import ApiError

    out = Out(args.json)
    try:
        return handler(args, out)
    except ApiError as exc:
        where = f" (HTTP {exc.status})" if exc.status else ""
        print(f"error: {exc.code}: {exc.message}{where}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_DETACHED
    except OSError as exc:  # a local file that cannot be read or written
        print(f"error: usage_error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
