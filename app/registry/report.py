"""A model's report as one self-contained HTML page: training curves and confusion matrix."""

from html import escape


def _polyline(values: list[float], *, width: int, height: int, top: float, color: str) -> str:
    if not values:
        return ""
    n = max(len(values) - 1, 1)
    points = " ".join(
        f"{i / n * width:.1f},{height - (v / top if top else 0) * height:.1f}"
        for i, v in enumerate(values)
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'


def _chart(title: str, series: dict[str, tuple[list[float], str]], top: float | None = None) -> str:
    width, height = 480, 180
    values = [v for vals, _ in series.values() for v in vals]
    top = top or (max(values) * 1.05 if values else 1.0)
    lines = "".join(
        _polyline(vals, width=width, height=height, top=top, color=color)
        for vals, color in series.values()
    )
    legend = " ".join(
        f'<span style="color:{c}">&#9632; {escape(name)}</span>' for name, (_, c) in series.items()
    )
    return (
        f"<h3>{escape(title)}</h3><div>{legend} (max {top:.3g})</div>"
        f'<svg width="{width}" height="{height}" style="border:1px solid #ccc">{lines}</svg>'
    )


def _confusion(classes: list[str], matrix: list[list[int]]) -> str:
    peak = max((v for row in matrix for v in row), default=1) or 1
    head = "".join(f"<th>{escape(c)}</th>" for c in classes)
    rows = []
    for label, row in zip(classes, matrix, strict=False):
        cells = "".join(
            f'<td style="background:rgba(30,90,200,{v / peak:.2f});'
            f'color:{"#fff" if v / peak > 0.5 else "#000"}">{v}</td>'
            for v in row
        )
        rows.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    return (
        "<h3>Confusion matrix (rows: true, columns: predicted)</h3>"
        f'<table border="1" cellpadding="4"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    )


def render(*, model, history: list[dict]) -> str:
    epochs = [h for h in history if "val_loss" in h]
    metrics = model.metrics or {}
    curves = _chart(
        "Loss",
        {
            "train": ([float(h.get("train_loss", 0)) for h in epochs], "#d62728"),
            "validation": ([float(h.get("val_loss", 0)) for h in epochs], "#1f77b4"),
        },
    )
    accuracy = _chart(
        "Validation accuracy",
        {"validation": ([float(h.get("val_accuracy", 0)) for h in epochs], "#2ca02c")},
        top=1.0,
    )
    per_class = "".join(
        f"<tr><td>{escape(str(c))}</td><td>{m.get('precision', 0):.3f}</td>"
        f"<td>{m.get('recall', 0):.3f}</td><td>{m.get('f1', 0):.3f}</td>"
        f"<td>{m.get('support', 0)}</td></tr>"
        for c, m in (metrics.get("per_class") or {}).items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{escape(model.id)}</title></head><body style="font-family:sans-serif">
<h2>Model {escape(model.id)}</h2>
<p><a href="/#/models/{escape(model.id)}">Open this model in the dashboard</a></p>
<p>base model {escape(model.base_model)} &middot; task {escape(model.task)} &middot;
held-out accuracy <b>{metrics.get("accuracy", 0):.3f}</b> &middot;
macro F1 <b>{metrics.get("macro_f1", 0):.3f}</b></p>
{curves}{accuracy}
{_confusion(model.classes, metrics.get("confusion_matrix") or [])}
<h3>Per class (held-out test split)</h3>
<table border="1" cellpadding="4"><tr><th>class</th><th>precision</th><th>recall</th>
<th>F1</th><th>support</th></tr>{per_class}</table></body></html>"""
