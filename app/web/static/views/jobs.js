// Jobs: the list, and the form (base models, strategies and their knobs with the
// schema's defaults). One job's live view is job.js.
import { baseModels, datasets, jobs, models, randomKey, schema as openapiSchema } from "../api.js";
import { go } from "../app.js";
import { TERMINAL, alertBox, badge, card, clear, field, fmt, h, link, table } from "../ui.js";
import { taskLabel } from "./datasets.js";

export const STRATEGIES = {
  full: { title: "Full", text: "Everything trains, end to end.", knobs: [] },
  partial: {
    title: "Partial",
    text: "The top trainable_blocks blocks and the new head (0 = head only: a linear probe on cached features).",
    knobs: ["trainable_blocks"],
  },
  layerwise: {
    title: "Layerwise",
    text: "Head first, then one more block from the top every unfreeze_every epochs.",
    knobs: ["unfreeze_every"],
  },
  progressive: {
    title: "Progressive",
    text: "Top first at a reduced rate, restored step by step as lower blocks unfreeze; lower blocks get lr_decay-smaller rates.",
    knobs: ["unfreeze_every", "lr_decay"],
  },
  auto: {
    title: "Auto",
    text: "A bounded search over strategy × depth × learning rate on the validation split, then the best.",
    knobs: ["auto_budget_epochs", "auto_budget_seconds", "lr_decay"],
  },
};

const TRAINING = [
  "epochs",
  "learning_rate",
  "batch_size",
  "optimizer",
  "scheduler",
  "weight_decay",
  "early_stopping_patience",
  "val_fraction",
  "label_smoothing",
  "class_weights",
  "augment",
  "seed",
  "device",
];
const BY_MODALITY = { image: ["image_size"], text: ["max_length"], tabular: [] };
const BY_TASK = Object.fromEntries(
  ["classification", "multilabel", "regression"].flatMap((kind) =>
    Object.entries(BY_MODALITY).map(([m, knobs]) => [`${m}_${kind}`, kind === "regression" ? [...knobs, "loss"] : knobs]),
  ),
);

export async function jobList(main, ctx) {
  const draw = (page) =>
    clear(
      main,
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, "Jobs"),
        h("div", { class: "actions" }, link("#/jobs/new", "New job", { class: "button primary" })),
      ),
      card(
        null,
        table(
          [
            { label: "Job", value: (j) => link(`#/jobs/${encodeURIComponent(j.id)}`, j.id) },
            { label: "Status", value: (j) => badge(j.status) },
            { label: "Base model", value: (j) => j.spec.base_model },
            { label: "Strategy", value: (j) => j.spec.strategy ?? "automatic" },
            { label: "Progress", value: (j) => miniProgress(j) },
            { label: "Model", value: (j) => (j.model_id ? link(`#/models/${encodeURIComponent(j.model_id)}`, j.model_id) : "–") },
            { label: "Created", value: (j) => fmt.date(j.created_at) },
          ],
          page.items,
          { empty: "No jobs yet: start one from a dataset." },
        ),
      ),
    );
  let page = await jobs.list({ signal: ctx.signal });
  draw(page);
  // While something runs, refresh the list now and then (the job view streams instead).
  const timer = setInterval(async () => {
    if (!page.items.some((j) => !TERMINAL.has(j.status))) return;
    try {
      page = await jobs.list({ signal: ctx.signal });
      draw(page);
    } catch {
      clearInterval(timer);
    }
  }, 3000);
  ctx.onLeave(() => clearInterval(timer));
}

function miniProgress(job) {
  const p = job.progress || {};
  return h(
    "span",
    { class: "mini-progress" },
    h("progress", { max: "1", value: String(p.fraction || 0), "aria-label": `${job.id} progress` }),
    ` ${p.epoch || 0}/${p.epochs || job.spec.epochs || "?"}`,
  );
}

// ---------------------------------------------------------------- the form

// A JobSpec property as {type, enum, nullable, default, auto, min, max, description}.
// A nullable field without a default in the schema defaults to null (pydantic leaves
// `default: null` out). `auto`: null means the service chooses ("null: chosen from …"),
// shown as "automatic"; its text is what it is chosen from.
function describe(schema, name) {
  const prop = schema.properties[name];
  let variants = prop.anyOf || [prop];
  const nullable = variants.some((v) => v.type === "null");
  variants = variants.filter((v) => v.type !== "null");
  const v = variants[0] || {};
  const values = variants.flatMap((x) => x.enum || (x.const !== undefined ? [x.const] : []));
  return {
    name,
    type: values.length ? "enum" : v.type,
    values,
    nullable,
    default: "default" in prop ? prop.default : nullable ? null : undefined,
    auto: autoText(prop, nullable),
    min: v.minimum ?? v.exclusiveMinimum,
    max: v.maximum ?? v.exclusiveMaximum,
    description: prop.description || "",
  };
}

function autoText(prop, nullable) {
  if (!nullable || (prop.default !== undefined && prop.default !== null)) return null;
  const m = /^null: (chosen\b.*)$/s.exec(prop.description || "");
  return m ? m[1] : null;
}

export const AUTOMATIC = "automatic (chosen by the service)";

// One line each for the knobs whose schema field has no description of its own.
const HELP = {
  pretrained: "start from the base model's pretrained weights (off: same architecture from scratch)",
  trainable_blocks: "blocks below the head that train (partial)",
  unfreeze_every: "epochs between unfreezing one more block (layerwise, progressive)",
  epochs: "passes over the training split",
  learning_rate: "base rate of the head; strategies derive the blocks' rates from it",
  batch_size: "samples per step",
  optimizer: "update rule",
  weight_decay: "decoupled L2 penalty",
  scheduler: "learning-rate schedule over the run",
  val_fraction: "share of train held out for validation (early stopping, auto's ranking)",
  early_stopping_patience: "stop after this many epochs without a better validation loss; empty: off",
  image_size: "images are resized to this square size",
  augment: "random flips and crops while training",
  seed: "for splits, order and initialisation",
  device: "auto, cpu or cuda[:N]",
  label_smoothing: "cross-entropy label smoothing",
  class_weights: "auto: weigh classes by inverse frequency",
};

function defaultText(d) {
  if (d.auto) return AUTOMATIC;
  if (d.default === null || d.default === undefined) return "none";
  return String(d.default);
}

function knob(d) {
  const id = `job-${d.name}`;
  const about = d.auto ? [HELP[d.name], `empty: ${d.auto}`] : [d.description || HELP[d.name]];
  const hint = [...about, `default ${defaultText(d)}`].filter(Boolean).join(" · ");
  let input;
  if (d.type === "boolean") {
    input = h("input", { id, name: d.name, type: "checkbox", checked: Boolean(d.default) });
    const hintEl = h("div", { class: "hint", id: `${id}-hint` }, hint);
    input.setAttribute("aria-describedby", hintEl.id);
    return h("div", { class: "field check" }, h("label", { for: id }, input, ` ${d.name}`), hintEl);
  }
  if (d.type === "enum") {
    const opts = d.values.map((v) => h("option", { value: String(v), selected: v === d.default }, String(v)));
    if (d.nullable) opts.unshift(h("option", { value: "", selected: d.default === null }, d.auto ? AUTOMATIC : "none"));
    input = h("select", { id, name: d.name }, opts);
  } else if (d.type === "integer" || d.type === "number") {
    input = h("input", {
      id,
      name: d.name,
      type: "number",
      inputmode: d.type === "integer" ? "numeric" : "decimal",
      step: d.type === "integer" ? "1" : "any",
      min: d.min !== undefined ? String(d.min) : null,
      max: d.max !== undefined ? String(d.max) : null,
      value: d.default === null || d.default === undefined ? "" : String(d.default),
      placeholder: d.auto ? "automatic" : d.nullable ? "off" : null,
      required: !d.nullable,
    });
  } else {
    input = h("input", { id, name: d.name, value: d.default ?? "" });
  }
  return field(d.name, input, hint);
}

function readKnob(form, d) {
  const el = form.elements[d.name];
  if (!el) return undefined;
  if (d.type === "boolean") return el.checked;
  const raw = el.value.trim();
  // Left at "automatic": not sent, the service chooses (and stores its choice).
  if (raw === "") return d.nullable && !d.auto ? null : undefined;
  // As typed: 1.5 for an integer is the service's 422 to explain, not ours to round.
  if (d.type === "integer" || d.type === "number") return Number(raw);
  return raw;
}

export async function jobForm(main, ctx) {
  const [openapi, bases, dsPage, modelPage] = await Promise.all([
    openapiSchema({ signal: ctx.signal }),
    baseModels.list({ signal: ctx.signal }),
    datasets.list({ limit: 500, signal: ctx.signal }),
    models.list({ limit: 500, signal: ctx.signal }),
  ]);
  const schema = openapi.components.schemas.JobSpec;
  const knobs = Object.fromEntries(Object.keys(schema.properties).map((n) => [n, describe(schema, n)]));
  const idempotencyKey = randomKey();
  // Fields this page has no place for yet still show, with the schema's defaults.
  const placed = new Set([
    "dataset_id",
    "base_model",
    "strategy",
    "pretrained",
    ...TRAINING,
    ...Object.values(BY_TASK).flat(),
    ...Object.values(STRATEGIES).flatMap((st) => st.knobs),
  ]);
  const other = Object.keys(knobs).filter((n) => !placed.has(n));

  if (!dsPage.items.length) {
    clear(
      main,
      h("h1", {}, "New job"),
      card(null, h("p", {}, "Upload a dataset first: ", link("#/datasets", "Datasets"), ".")),
    );
    return;
  }
  const wanted = ctx.query.get("dataset");
  const dsSelect = h(
    "select",
    { id: "job-dataset", name: "dataset_id", required: true },
    dsPage.items.map((d) =>
      h("option", { value: d.id, selected: d.id === wanted }, `${d.name} · ${taskLabel(d.task)} · ${d.num_samples} samples (${d.id})`),
    ),
  );
  const baseSelect = h("select", { id: "job-base-model", name: "base_model", required: true });
  const baseHint = h("div", { class: "hint", id: "job-base-model-hint" });
  baseSelect.setAttribute("aria-describedby", baseHint.id);
  const strategyBox = h("fieldset", { class: "strategies" }, h("legend", {}, "Strategy"));
  const strategyKnobs = h("div", { class: "grid-3 knobs" });
  const taskKnobs = h("div", { class: "grid-3 knobs" });
  const error = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, "Start training");

  const wantedBase = ctx.query.get("base");
  // The strategies the schema allows (a new one shows with its name until described here);
  // a null default first, as "Automatic": the service chooses from the base model.
  const st = knobs.strategy;
  if (st.nullable && st.default === null) {
    const text = st.auto || "chosen by the service";
    strategyBox.append(
      h(
        "label",
        { class: "strategy", for: "strategy-automatic" },
        h("input", { type: "radio", name: "strategy", id: "strategy-automatic", value: "", checked: true }),
        h("span", { class: "strategy-title" }, "Automatic (default)"),
        h("span", { class: "strategy-text" }, `${text[0].toUpperCase()}${text.slice(1)}.`),
      ),
    );
  }
  for (const name of st.values) {
    const s = STRATEGIES[name] || { title: name, text: "", knobs: [] };
    const id = `strategy-${name}`;
    strategyBox.append(
      h(
        "label",
        { class: "strategy", for: id },
        h("input", { type: "radio", name: "strategy", id, value: name, checked: name === knobs.strategy.default }),
        h("span", { class: "strategy-title" }, s.title, name === knobs.strategy.default ? " (default)" : ""),
        h("span", { class: "strategy-text" }, s.text),
      ),
    );
  }

  const form = h(
    "form",
    { class: "job-form", novalidate: true },
    card(
      "What to train",
      h(
        "div",
        { class: "grid-2" },
        field("Dataset", dsSelect),
        h("div", { class: "field" }, h("label", { for: baseSelect.id }, "Base model"), baseSelect, baseHint),
      ),
      knob(knobs.pretrained),
      taskKnobs,
    ),
    card("How", strategyBox, h("h3", {}, "Strategy knobs"), strategyKnobs),
    card("Training", h("div", { class: "grid-3 knobs" }, TRAINING.filter((n) => knobs[n]).map((n) => knob(knobs[n])))),
    other.length ? card("Other settings", h("div", { class: "grid-3 knobs" }, other.map((n) => knob(knobs[n])))) : null,
    error,
    h("div", { class: "actions" }, submit),
  );

  const selectedDataset = () => dsPage.items.find((d) => d.id === dsSelect.value);
  function fillBases() {
    const task = selectedDataset()?.task;
    const keep = baseSelect.value || wantedBase;
    const fits = bases.filter((b) => b.task === task);
    const mine = modelPage.items.filter((m) => m.task === task);
    clear(
      baseSelect,
      h(
        "optgroup",
        { label: "Base models" },
        fits.map((b) =>
          h(
            "option",
            { value: b.name, disabled: !b.weights_present, dataset: { weights: String(b.weights_present) } },
            `${b.name}${b.weights_present ? "" : " — weights absent"} · ${fmt.int(b.params)} params`,
          ),
        ),
      ),
      mine.length
        ? h(
            "optgroup",
            { label: "Continue from one of your models" },
            mine.map((m) => h("option", { value: `model:${m.id}` }, `model:${m.id} (${m.base_model})`)),
          )
        : null,
    );
    const options = [...baseSelect.options];
    const pick =
      options.find((o) => o.value === keep && !o.disabled) ||
      options.find((o) => o.value === knobs.base_model.default && !o.disabled) ||
      options.find((o) => !o.disabled);
    if (pick) baseSelect.value = pick.value;
    clear(
      taskKnobs,
      (BY_TASK[task] || []).filter((n) => knobs[n]).map((n) => knob(knobs[n])),
    );
    describeBase();
  }
  function describeBase() {
    const b = bases.find((x) => x.name === baseSelect.value);
    const absent = bases.filter((x) => x.task === selectedDataset()?.task && !x.weights_present).length;
    clear(
      baseHint,
      b ? b.description : baseSelect.value ? "Continue from a model trained here (same architecture)." : "",
      b && b.default_image_size ? ` · native image size ${b.default_image_size}` : "",
      absent ? ` · ${absent} greyed out: weights not installed on this server` : "",
    );
  }
  function fillStrategyKnobs() {
    const s = form.elements.strategy.value;
    clear(
      strategyKnobs,
      !s
        ? h("p", { class: "muted" }, "The service chooses the strategy and its knobs; the job's spec shows its choice.")
        : STRATEGIES[s]?.knobs.length
        ? STRATEGIES[s].knobs.filter((n) => knobs[n]).map((n) => knob(knobs[n]))
        : h("p", { class: "muted" }, "No knobs of its own."),
    );
  }
  dsSelect.addEventListener("change", fillBases);
  baseSelect.addEventListener("change", describeBase);
  strategyBox.addEventListener("change", fillStrategyKnobs);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(error);
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const spec = { dataset_id: dsSelect.value, base_model: baseSelect.value };
    // "" is Automatic: no strategy sent.
    if (form.elements.strategy.value) spec.strategy = form.elements.strategy.value;
    const shown = new Set([...form.querySelectorAll("[name]")].map((el) => el.name));
    for (const d of Object.values(knobs)) {
      if (["dataset_id", "base_model", "strategy"].includes(d.name) || !shown.has(d.name)) continue;
      const v = readKnob(form, d);
      if (v !== undefined) spec[d.name] = v;
    }
    submit.disabled = true;
    try {
      const job = await jobs.create(spec, idempotencyKey);
      go(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      clear(error, alertBox(err.message, { code: err.code }));
      const names = [...(err.fields || []).map((f) => f.field), err.message.split(":")[0]];
      const bad = names.map((n) => form.elements[n]).find((el) => el && el.focus);
      if (bad) {
        bad.setAttribute("aria-invalid", "true");
        bad.focus();
      }
    } finally {
      submit.disabled = false;
    }
  });

  clear(
    main,
    h(
      "div",
      { class: "page-head", dataset: { screen: "job-form" } },
      h("div", {}, h("div", { class: "crumbs" }, link("#/jobs", "Jobs"), " / new"), h("h1", {}, "New job")),
    ),
    h("p", { class: "muted" }, "Defaults come from the service's own schema (/openapi.json); change only what you need."),
    form,
  );
  fillBases();
  fillStrategyKnobs();
}
