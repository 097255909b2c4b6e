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


def _scatter(points: list[list[float]]) -> str:
    """Predicted (y) against true (x) on the held-out split, with the y = x line."""
    size, pad = 320, 24
    if not points:
        return ""
    lo = min(min(p) for p in points)
    hi = max(max(p) for p in points)
    span = (hi - lo) or 1.0

    def at(v: float, flip: bool) -> float:
        f = (v - lo) / span
        return pad + (1 - f if flip else f) * (size - 2 * pad)

    dots = "".join(
        f'<circle cx="{at(t, False):.1f}" cy="{at(p, True):.1f}" r="2.5" fill="#1f77b4" '
        'fill-opacity="0.6"/>'
        for t, p in points
    )
    diag = (
        f'<line x1="{at(lo, False):.1f}" y1="{at(lo, True):.1f}" x2="{at(hi, False):.1f}" '
        f'y2="{at(hi, True):.1f}" stroke="#999" stroke-dasharray="4"/>'
    )
    return (
        f"<h3>Predicted against true (held-out test split, {len(points)} points)</h3>"
        f"<div>x: true, y: predicted, from {lo:.4g} to {hi:.4g}</div>"
        f'<svg width="{size}" height="{size}" style="border:1px solid #ccc">{diag}{dots}</svg>'
    )


def _label_bars(per_label: dict[str, dict]) -> str:
    """Per-label F1 as horizontal bars, with precision, recall, threshold and support."""
    rows = "".join(
        f"<tr><td>{escape(str(c))}</td><td><svg width='200' height='12'>"
        f"<rect width='{200 * m.get('f1', 0):.1f}' height='12' fill='#2ca02c'/></svg> "
        f"{m.get('f1', 0):.3f}</td><td>{m.get('precision', 0):.3f}</td>"
        f"<td>{m.get('recall', 0):.3f}</td><td>{m.get('threshold', 0):.3f}</td>"
        f"<td>{m.get('ap', 0):.3f}</td><td>{m.get('support', 0)}</td></tr>"
        for c, m in per_label.items()
    )
    return (
        "<h3>Per-label F1 (held-out test split, at the thresholds tuned on validation)</h3>"
        '<table border="1" cellpadding="4"><tr><th>label</th><th>F1</th><th>precision</th>'
        f"<th>recall</th><th>threshold</th><th>AP</th><th>support</th></tr>{rows}</table>"
    )


def _classification(model, metrics: dict) -> tuple[str, str]:
    headline = (
        f"held-out accuracy <b>{metrics.get('accuracy', 0):.3f}</b> &middot;\n"
        f"macro F1 <b>{metrics.get('macro_f1', 0):.3f}</b>"
    )
    per_class = "".join(
        f"<tr><td>{escape(str(c))}</td><td>{m.get('precision', 0):.3f}</td>"
        f"<td>{m.get('recall', 0):.3f}</td><td>{m.get('f1', 0):.3f}</td>"
        f"<td>{m.get('support', 0)}</td></tr>"
        for c, m in (metrics.get("per_class") or {}).items()
    )
    body = f"""{_confusion(model.classes, metrics.get("confusion_matrix") or [])}
<h3>Per class (held-out test split)</h3>
<table border="1" cellpadding="4"><tr><th>class</th><th>precision</th><th>recall</th>
<th>F1</th><th>support</th></tr>{per_class}</table>"""
    return headline, body


def _multilabel(model, metrics: dict) -> tuple[str, str]:
    headline = (
        f"held-out micro F1 <b>{metrics.get('micro_f1', 0):.3f}</b> &middot; "
        f"macro F1 <b>{metrics.get('macro_f1', 0):.3f}</b> &middot; "
        f"mAP <b>{metrics.get('map', 0):.3f}</b>"
    )
    return headline, _label_bars(metrics.get("per_label") or {})


def _regression(model, metrics: dict) -> tuple[str, str]:
    headline = (
        f"held-out R² <b>{metrics.get('r2', 0):.3f}</b> &middot; "
        f"RMSE <b>{metrics.get('rmse', 0):.4g}</b> &middot; "
        f"MAE <b>{metrics.get('mae', 0):.4g}</b> &middot; residuals: std "
        f"{metrics.get('residual_std', 0):.4g}, 10th-90th percentile "
        f"{metrics.get('residual_p10', 0):.4g} to {metrics.get('residual_p90', 0):.4g}"
    )
    return headline, _scatter(metrics.get("points") or [])


# Per kind (app/training/tasks.py): the headline numbers and the page's body, and the
# name of the validation score the loop watched.
SECTIONS = {
    "classification": (_classification, "accuracy", 1.0),
    "multilabel": (_multilabel, "mAP", 1.0),
    "regression": (_regression, "R²", None),
}


def render(*, model, history: list[dict]) -> str:
    epochs = [h for h in history if "val_loss" in h]
    metrics = model.metrics or {}
    section, score_name, top = SECTIONS.get(
        model.task.split("_", 1)[-1], SECTIONS["classification"]
    )
    curves = _chart(
        "Loss",
        {
            "train": ([float(h.get("train_loss", 0)) for h in epochs], "#d62728"),
            "validation": ([float(h.get("val_loss", 0)) for h in epochs], "#1f77b4"),
        },
    )
    score = _chart(
        f"Validation {score_name}",
        {
            "validation": (
                [max(0.0, float(h.get("val_score", h.get("val_accuracy", 0)))) for h in epochs],
                "#2ca02c",
            )
        },
        top=top,
    )
    headline, body = section(model, metrics)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{escape(model.id)}</title></head><body style="font-family:sans-serif">
<h2>Model {escape(model.id)}</h2>
<p><a href="/#/models/{escape(model.id)}">Open this model in the dashboard</a></p>
<p>base model {escape(model.base_model)} &middot; task {escape(model.task)} &middot;
{headline}</p>
{curves}{score}
{body}</body></html>"""
