// Models: the list, and one model: metrics, confusion matrix, curves, lineage, exports,
// and a "try it" panel that calls predict.
import { ApiError, jobs, models } from "../api.js";
import { COLORS, confusionHeatmap, lineChart } from "../charts.js";
import { alertBox, card, clear, field, fmt, h, link, stat, table } from "../ui.js";
import { taskLabel } from "./datasets.js";

// What the page does per task: its "try it" input, its export formats and its kind
// (classification, multilabel, regression: which metrics view). A task not in the table
// gets the generic metrics table.
const IMAGE_EXPORTS = ["safetensors", "torchscript", "onnx"];
const TASKS = {
  image_classification: { input: (o) => imageInput(o), exports: IMAGE_EXPORTS, kind: "classification" },
  image_multilabel: { input: (o) => imageInput(o), exports: IMAGE_EXPORTS, kind: "multilabel" },
  image_regression: { input: (o) => imageInput(o), exports: IMAGE_EXPORTS, kind: "regression" },
  text_classification: { input: (o) => textInput(o), exports: ["safetensors"], kind: "classification" },
  text_multilabel: { input: (o) => textInput(o), exports: ["safetensors"], kind: "multilabel" },
  text_regression: { input: (o) => textInput(o), exports: ["safetensors"], kind: "regression" },
  tabular_classification: { input: (o) => tabularInput(o), exports: ["safetensors"], kind: "classification" },
  tabular_multilabel: { input: (o) => tabularInput(o), exports: ["safetensors"], kind: "multilabel" },
  tabular_regression: { input: (o) => tabularInput(o), exports: ["safetensors"], kind: "regression" },
};

export async function modelList(main, ctx) {
  const page = await models.list({ signal: ctx.signal });
  clear(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Models"), h("p", { class: "muted" }, `${page.total} in all`)),
    card(
      null,
      table(
        [
          { label: "Model", value: (m) => link(`#/models/${encodeURIComponent(m.id)}`, m.id) },
          { label: "Task", value: (m) => taskLabel(m.task) },
          { label: "Base model", value: (m) => m.base_model },
          { label: "Classes", num: true, value: (m) => fmt.int(m.classes.length) },
          { label: "Test accuracy", num: true, value: (m) => fmt.pct(m.metrics.accuracy) },
          { label: "Macro F1", num: true, value: (m) => fmt.num(m.metrics.macro_f1) },
          { label: "Created", value: (m) => fmt.date(m.created_at) },
        ],
        page.items,
        { empty: "No models yet: a job that succeeds makes one." },
      ),
    ),
  );
}

const idLink = (kind, id) => (id ? link(`#/${kind}/${encodeURIComponent(id)}`, id) : "–");

export async function modelView(main, ctx, id) {
  const model = await models.get(id, { signal: ctx.signal });
  document.title = `${model.id} · finetune`;
  const m = model.metrics || {};
  const lineage = model.lineage || {};
  let job = null;
  try {
    job = await jobs.get(model.job_id, { signal: ctx.signal });
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }

  const kind = TASKS[model.task]?.kind;
  const knownTask = kind === "classification" && m.per_class;
  const testSamples = m.per_class ? Object.values(m.per_class).reduce((a, c) => a + (c.support || 0), 0) : null;

  const base = model.base_model.startsWith("model:")
    ? idLink("models", model.base_model.slice("model:".length))
    : model.base_model;
  const lineageRows = [
    ["Dataset", idLink("datasets", model.dataset_id)],
    ["Base model", base],
    ["Architecture", lineage.architecture || "–"],
    ["Parent model", idLink("models", lineage.parent_model_id)],
    [
      "Ancestors",
      lineage.parents && lineage.parents.length ? lineage.parents.flatMap((p, i) => [i ? " ← " : "", idLink("models", p)]) : "–",
    ],
    ["Job", idLink("jobs", model.job_id)],
    ["Strategy", lineage.strategy || job?.spec.strategy || "–"],
    ["Pretrained start", lineage.pretrained === undefined ? "–" : lineage.pretrained ? "yes" : "no (from scratch)"],
    ["Best epoch", lineage.best_epoch ?? "–"],
    ["Created", fmt.date(model.created_at)],
  ];

  const sections = [
    h(
      "div",
      { class: "page-head", dataset: { screen: "model" } },
      h("div", {}, h("div", { class: "crumbs" }, link("#/models", "Models"), " / ", model.id), h("h1", {}, `Model ${model.id}`)),
      h(
        "div",
        { class: "actions" },
        link(`#/jobs/new?dataset=${encodeURIComponent(model.dataset_id)}&base=${encodeURIComponent(`model:${model.id}`)}`, "Fine-tune further", {
          class: "button",
        }),
      ),
    ),
    h(
      "div",
      { class: "stats" },
      knownTask
        ? [
            stat("test accuracy", fmt.pct(m.accuracy), { dataset: { testid: "accuracy" } }),
            stat("macro F1", fmt.num(m.macro_f1)),
            stat("test samples", fmt.int(testSamples)),
          ]
        : kind === "regression"
          ? [stat("test R²", fmt.num(m.r2), { dataset: { testid: "r2" } }), stat("RMSE", fmt.num(m.rmse, 4)), stat("MAE", fmt.num(m.mae, 4))]
          : kind === "multilabel"
            ? [stat("micro F1", fmt.num(m.micro_f1), { dataset: { testid: "micro-f1" } }), stat("macro F1", fmt.num(m.macro_f1)), stat("mAP", fmt.num(m.map))]
            : [],
      stat("classes", fmt.int(model.classes.length)),
      stat("task", taskLabel(model.task)),
      stat("base model", model.base_model),
    ),
    h(
      "div",
      { class: "grid-main" },
      tryIt(model),
      h("div", { class: "stack" }, card("Lineage", definitionList(lineageRows)), exportCard(model)),
    ),
  ];

  if (knownTask) {
    sections.push(
      h(
        "div",
        { class: "grid-main" },
        card("Per class (held-out test split)", perClassTable(model.classes, m.per_class)),
        card(null, m.confusion_matrix ? confusionHeatmap(model.classes, m.confusion_matrix) : h("p", {}, "No confusion matrix.")),
      ),
    );
  } else if (kind === "multilabel" && m.per_label) {
    sections.push(card("Per label (held-out test split, thresholds tuned on validation)", perLabelTable(m.per_label)));
  } else {
    // Regression, or a task this page does not know: every scalar metric.
    sections.push(card("Metrics", genericMetrics(m)));
  }

  const epochs = (job?.history || []).filter((r) => r.phase !== "search" && "val_loss" in r);
  if (epochs.length) {
    const loss = lineChart({
      title: "Loss",
      yLabel: "cross-entropy",
      series: [
        { label: "train", color: COLORS.train, points: epochs.map((r) => ({ x: r.epoch, y: r.train_loss })) },
        { label: "validation", color: COLORS.val, points: epochs.map((r) => ({ x: r.epoch, y: r.val_loss })) },
      ],
      yMin: 0,
    });
    const acc = lineChart({
      title: "Validation accuracy",
      yLabel: "accuracy",
      series: [{ label: "validation", color: COLORS.acc, points: epochs.map((r) => ({ x: r.epoch, y: r.val_score ?? r.val_accuracy })) }],
      yMin: 0,
      yMax: 1,
    });
    ctx.onLeave(loss.destroy);
    ctx.onLeave(acc.destroy);
    sections.push(card("Training curves", h("div", { class: "grid-2 charts" }, loss.el, acc.el)));
  }
  clear(main, ...sections);
}

function definitionList(rows) {
  return h(
    "dl",
    { class: "kv" },
    rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

function perClassTable(classes, perClass) {
  const rows = classes.map((c) => ({ c, ...(perClass[c] || {}) }));
  const cell = (v) => {
    const el = h("span", {}, fmt.num(v));
    if (v !== undefined && v < 0.5) el.className = "low";
    return el;
  };
  return table(
    [
      { label: "Class", value: (r) => r.c },
      { label: "Precision", num: true, value: (r) => cell(r.precision) },
      { label: "Recall", num: true, value: (r) => cell(r.recall) },
      { label: "F1", num: true, value: (r) => cell(r.f1) },
      { label: "Support", num: true, value: (r) => fmt.int(r.support) },
    ],
    rows,
  );
}

function perLabelTable(perLabel) {
  return table(
    [
      { label: "Label", value: (r) => r[0] },
      { label: "F1", num: true, value: (r) => fmt.num(r[1].f1) },
      { label: "Precision", num: true, value: (r) => fmt.num(r[1].precision) },
      { label: "Recall", num: true, value: (r) => fmt.num(r[1].recall) },
      { label: "Threshold", num: true, value: (r) => fmt.num(r[1].threshold) },
      { label: "AP", num: true, value: (r) => fmt.num(r[1].ap) },
      { label: "Support", num: true, value: (r) => fmt.int(r[1].support) },
    ],
    Object.entries(perLabel),
  );
}

function genericMetrics(metrics) {
  const rows = Object.entries(metrics).filter(([, v]) => typeof v === "number" || typeof v === "string");
  return table(
    [
      { label: "Metric", value: (r) => r[0] },
      { label: "Value", num: true, value: (r) => (typeof r[1] === "number" ? fmt.num(r[1], 4) : r[1]) },
    ],
    rows,
    { empty: "This model reports no scalar metrics." },
  );
}

const EXPORTS = {
  safetensors: ["safetensors", "weights (state dict) + config"],
  torchscript: ["TorchScript", "a traced module for torch.jit.load"],
  onnx: ["ONNX", "for onnxruntime; inputs in [0, 1]"],
};

function exportCard(model) {
  const formats = (TASKS[model.task]?.exports || ["safetensors"]).map((f) => [f, ...EXPORTS[f]]);
  const result = h("div", { "aria-live": "polite" });
  return card(
    "Export",
    h(
      "div",
      { class: "export-buttons" },
      formats.map(([fmtName, label, text]) => {
        const b = h("button", { type: "button", class: "button", dataset: { format: fmtName }, title: text }, `Download ${label}`);
        b.addEventListener("click", async () => {
          b.disabled = true;
          clear(result, h("p", { class: "muted" }, `Preparing ${label}…`));
          try {
            const got = await models.download(model.id, fmtName);
            clear(result, h("p", { class: "muted" }, `Saved ${got.name} (${fmt.bytes(got.size)}).`));
          } catch (err) {
            clear(result, alertBox(err.message, { code: err.code }));
          } finally {
            b.disabled = false;
          }
        });
        return b;
      }),
    ),
    h("p", { class: "hint" }, "TorchScript and ONNX are for image models; text and tabular models export as safetensors."),
    result,
  );
}

// ---------------------------------------------------------------- try it

function tryIt(model) {
  const out = h("div", { class: "predictions", id: "predict-result", "aria-live": "polite" });
  const n = model.classes.length;
  const topK = h(
    "select",
    { id: "predict-top-k", name: "top_k" },
    [1, 3, 5, 10].filter((k) => k <= Math.max(n, 1)).map((k) => h("option", { value: String(k), selected: k === Math.min(3, n) }, String(k))),
  );
  const run = async (request) => {
    clear(out, h("p", { class: "muted" }, "Predicting…"));
    try {
      const res = await models.predict(model.id, request);
      clear(out, res.predictions.map(predictionView));
    } catch (err) {
      clear(out, alertBox(err.message, { code: err.code }));
    }
  };
  const task = TASKS[model.task];
  const input = task
    ? task.input({ run, topK, model })
    : h("p", { class: "muted" }, `No input form for task ${model.task} yet; use the API.`);
  return card("Try it", input, out);
}

function predictionView(p) {
  if (p.value !== undefined) {
    return h("div", { class: "prediction" }, h("div", { class: "prediction-label" }, h("span", { class: "muted" }, "value "), h("strong", { class: "top-label" }, fmt.num(p.value, 4))));
  }
  const head = p.labels
    ? h("div", { class: "prediction-label" }, h("span", { class: "muted" }, "labels "), h("strong", { class: "top-label" }, p.labels.length ? p.labels.join(", ") : "none"))
    : h("div", { class: "prediction-label" }, h("span", { class: "muted" }, "label "), h("strong", { class: "top-label" }, p.label), ` · ${fmt.pct(p.score)}`);
  return h(
    "div",
    { class: "prediction" },
    head,
    h(
      "ol",
      { class: "topk" },
      p.top_k.map((t) => {
        const fill = h("span", { class: "topk-fill" });
        fill.style.width = `${Math.max(0, Math.min(1, t.score)) * 100}%`;
        return h(
          "li",
          {},
          h("span", { class: "topk-label" }, t.label),
          h("span", { class: "topk-bar", "aria-hidden": "true" }, fill),
          h("span", { class: "topk-score num" }, fmt.pct(t.score)),
        );
      }),
    ),
  );
}

function imageInput({ run, topK }) {
  const input = h("input", { id: "predict-file", type: "file", accept: "image/*", class: "file-input" });
  const preview = h("div", { class: "preview" });
  let objectUrl = null;
  const send = (file) => {
    if (!file) return;
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    clear(preview, h("img", { src: objectUrl, alt: `the image sent: ${file.name}` }), h("span", { class: "muted" }, file.name));
    const body = new FormData();
    body.append("files", file, file.name);
    body.append("top_k", topK.value);
    run({ body });
  };
  input.addEventListener("change", () => send(input.files[0]));
  const zone = h(
    "div",
    { class: "drop small" },
    h("div", { class: "drop-title" }, "Drop an image here"),
    h("label", { for: input.id, class: "button" }, "Choose an image…"),
    input,
    preview,
  );
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("drag");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("drag");
    send(e.dataTransfer.files[0]);
  });
  return h("div", {}, zone, field("Top k", topK));
}

function textInput({ run, topK }) {
  const text = h("textarea", { id: "predict-text", rows: "4", placeholder: "Type a text to classify…" });
  const form = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        if (text.value.trim()) run({ json: { inputs: [text.value], top_k: Number(topK.value) } });
      },
    },
    field("Text", text),
    field("Top k", topK),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Predict")),
  );
  return form;
}

// The API does not list a tabular model's feature columns; a row with none makes predict
// name them ("missing columns [...]"), so the form asks it once and builds the fields.
function tabularInput({ run, topK, model }) {
  const fields = h("div", { class: "grid-3 knobs" });
  const raw = h("textarea", { id: "predict-row", rows: "4", placeholder: '{"column": value, ...}' });
  const rawField = field("Row as JSON", raw, "Every feature column; null for a missing value.");
  const form = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        let row;
        if (fields.childElementCount) {
          row = {};
          for (const el of fields.querySelectorAll("input")) {
            const v = el.value.trim();
            row[el.name] = v === "" ? null : Number.isFinite(Number(v)) ? Number(v) : v;
          }
        } else {
          try {
            row = JSON.parse(raw.value || "{}");
          } catch (err) {
            fields.after(alertBox(`Not JSON: ${err.message}`));
            return;
          }
        }
        run({ json: { inputs: [row], top_k: Number(topK.value) } });
      },
    },
    fields,
    rawField,
    field("Top k", topK),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Predict")),
  );
  const discover = h("button", { type: "button", class: "ghost" }, "Fill in the columns");
  discover.addEventListener("click", async () => {
    try {
      await models.predict(model.id, { json: { inputs: [{}] } });
    } catch (err) {
      const m = /missing columns \[(.*)\]/.exec(err.message);
      if (!m) return;
      const names = [...m[1].matchAll(/'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1] ?? x[2]);
      clear(
        fields,
        names.map((name) => field(name, h("input", { name, id: `col-${name.replace(/\W/g, "_")}`, autocomplete: "off" }))),
      );
      rawField.hidden = names.length > 0;
      discover.hidden = true;
    }
  });
  return h("div", {}, discover, form);
}
