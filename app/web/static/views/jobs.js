// Jobs: the list, the form (base models, strategies and their knobs with the schema's
// defaults), and one job followed live over its event stream.
import { baseModels, datasets, jobs, models, randomKey, schema as openapiSchema } from "../api.js";
import { go } from "../app.js";
import { COLORS, lineChart } from "../charts.js";
import { TERMINAL, alertBox, badge, card, clear, field, fmt, h, link, stat, table } from "../ui.js";
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
    knobs: ["auto_budget_epochs", "lr_decay"],
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
const BY_TASK = { image_classification: ["image_size"], text_classification: ["max_length"], tabular_classification: [] };

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
            { label: "Strategy", value: (j) => j.spec.strategy },
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
    ` ${p.epoch || 0}/${p.epochs || job.spec.epochs}`,
  );
}

// ---------------------------------------------------------------- the form

// A JobSpec property as {type, enum, nullable, default, min, max, description}.
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
    default: prop.default,
    min: v.minimum ?? v.exclusiveMinimum,
    max: v.maximum ?? v.exclusiveMaximum,
    description: prop.description || "",
  };
}

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
  if (d.default === null || d.default === undefined) return "none";
  return String(d.default);
}

function knob(d) {
  const id = `job-${d.name}`;
  const hint = [d.description || HELP[d.name], `default ${defaultText(d)}`].filter(Boolean).join(" · ");
  let input;
  if (d.type === "boolean") {
    input = h("input", { id, name: d.name, type: "checkbox", checked: Boolean(d.default) });
    const hintEl = h("div", { class: "hint", id: `${id}-hint` }, hint);
    input.setAttribute("aria-describedby", hintEl.id);
    return h("div", { class: "field check" }, h("label", { for: id }, input, ` ${d.name}`), hintEl);
  }
  if (d.type === "enum") {
    const opts = d.values.map((v) => h("option", { value: String(v), selected: v === d.default }, String(v)));
    if (d.nullable) opts.unshift(h("option", { value: "", selected: d.default === null }, "none"));
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
      placeholder: d.nullable ? "off" : null,
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
  if (raw === "") return d.nullable ? null : undefined;
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
  // The strategies the schema allows (a new one shows with its name until described here).
  for (const name of knobs.strategy.values) {
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
      STRATEGIES[s]?.knobs.length
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
    const spec = {
      dataset_id: dsSelect.value,
      base_model: baseSelect.value,
      strategy: form.elements.strategy.value,
    };
    const shown = new Set([...form.querySelectorAll("[name]")].map((el) => el.name));
    for (const d of Object.values(knobs)) {
      if (d.name in spec || !shown.has(d.name)) continue;
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

// ---------------------------------------------------------------- one job, live

export async function jobView(main, ctx, id) {
  let job = await jobs.get(id, { signal: ctx.signal });
  const spec = job.spec;

  const status = h("span", { class: "job-status" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel job");
  const modelLink = h("span");
  const bar = h("progress", { max: "100", id: "job-progress", "aria-label": "training progress" });
  const barText = h("div", { class: "progress-text", id: "job-progress-text", "aria-live": "polite" });
  const stage = h("div", { class: "stage", id: "job-stage" }, h("p", { class: "muted" }, "Waiting for the first epoch…"));
  const stages = h("ol", { class: "stages", id: "job-stages" });
  const board = h("div", { id: "job-leaderboard" });
  const notice = h("div");
  const live = h("span", { class: "live", id: "job-live", dataset: { live: "on" } }, "● live");

  const loss = lineChart({
    title: "Loss",
    yLabel: "cross-entropy",
    series: [
      { label: "train", color: COLORS.train, points: [] },
      { label: "validation", color: COLORS.val, points: [] },
    ],
    yMin: 0,
  });
  const acc = lineChart({
    title: "Validation accuracy",
    yLabel: "accuracy",
    series: [{ label: "validation", color: COLORS.acc, points: [] }],
    yMin: 0,
    yMax: 1,
  });
  ctx.onLeave(loss.destroy);
  ctx.onLeave(acc.destroy);

  const state = {
    status: job.status,
    last: null,
    search: new Map(),
    searched: new Set(),
    stages: [],
    cancelRequested: job.cancel_requested,
  };

  // The run so far as stages: consecutive epochs with the same groups at the same rates.
  function addStage(r) {
    if (r.phase === "search") return;
    const what = stageText(r.schedule || []);
    const lastStage = state.stages[state.stages.length - 1];
    if (lastStage && lastStage.what === what) lastStage.to = r.epoch;
    else state.stages.push({ from: r.epoch, to: r.epoch, what });
    clear(
      stages,
      state.stages.map((st) =>
        h("li", {}, h("span", { class: "stage-epochs" }, st.from === st.to ? `epoch ${st.from}` : `epochs ${st.from}–${st.to}`), st.what),
      ),
    );
  }

  function showStatus() {
    clear(status, badge(state.status));
    if (state.cancelRequested && !TERMINAL.has(state.status)) status.append(" cancelling…");
    cancel.hidden = TERMINAL.has(state.status);
    cancel.disabled = state.cancelRequested;
  }

  function showProgress() {
    const r = state.last;
    if (state.status === "succeeded") {
      bar.value = 100;
      barText.textContent = `Done · 100% · ${r ? `${r.epoch} epochs` : ""}`;
      return;
    }
    if (!r) {
      if (TERMINAL.has(state.status)) {
        bar.value = 0;
        barText.textContent = `${state.status} before the first epoch`;
      } else {
        bar.removeAttribute("value"); // indeterminate: loading the model, caching features
        barText.textContent = state.status === "queued" ? "Queued: waiting for a worker" : "Starting: preparing data and model…";
      }
      return;
    }
    if (spec.strategy !== "auto") {
      bar.value = Math.round(Math.min(r.epoch / r.epochs, 1) * 100);
      const eta = TERMINAL.has(state.status) ? state.status : `ETA ${fmt.duration(r.eta_seconds)}`;
      barText.textContent = `Epoch ${r.epoch} of ${r.epochs} · ${bar.value}% · ${eta}`;
      return;
    }
    // auto: the search (about auto_budget_epochs epochs in all), then the final training.
    const searched = state.searched.size;
    const searchTotal = Math.max(spec.auto_budget_epochs || 0, searched);
    const search = r.phase === "search";
    const done = searched + (search ? 0 : r.epoch);
    const total = searchTotal + (search ? spec.epochs : r.epochs);
    bar.value = Math.round(Math.min(done / total, 1) * 100);
    const end = TERMINAL.has(state.status) ? ` · ${state.status}` : "";
    barText.textContent = search
      ? `Stage 1 of 2, search: candidate ${r.candidate + 1}, epoch ${r.epoch} of ${r.epochs} · ${bar.value}% overall${end}`
      : `Stage 2 of 2, the chosen strategy: epoch ${r.epoch} of ${r.epochs} · ${bar.value}% overall · ` +
        (end ? state.status : `ETA ${fmt.duration(r.eta_seconds)}`);
  }

  function showStage(r) {
    const groups = r.schedule || [];
    const training = groups.filter((g) => g.trainable);
    const frozen = groups.length - training.length;
    clear(
      stage,
      h(
        "p",
        {},
        r.phase === "search" ? `Search candidate ${r.candidate + 1}, ` : "",
        `epoch ${r.epoch}: ${training.length} of ${groups.length} parameter groups train (${frozen} frozen), `,
        `${fmt.int(r.trainable_params)} trainable parameters.`,
      ),
      table(
        [
          { label: "Group (top → bottom)", value: (g) => g.group },
          { label: "Trains", value: (g) => (g.trainable ? "yes" : "frozen") },
          { label: "Learning rate", num: true, value: (g) => (g.trainable ? fmt.lr(g.lr) : "–") },
          { label: "Parameters", num: true, value: (g) => fmt.int(g.params) },
        ],
        groups,
      ),
    );
    for (const [i, tr] of stage.querySelectorAll("tbody tr").entries()) {
      if (!groups[i].trainable) tr.classList.add("frozen");
    }
  }

  function showBoard(final) {
    if (spec.strategy !== "auto") return;
    if (!final) {
      const rows = [...state.search.values()].sort((a, b) => a.candidate - b.candidate);
      clear(
        board,
        card(
          "Auto search: candidates (live)",
          table(
            [
              { label: "Candidate", num: true, value: (e) => e.candidate + 1 },
              { label: "Trains (now)", value: (e) => e.trains },
              { label: "Best val accuracy", num: true, value: (e) => fmt.pct(e.val_accuracy) },
              { label: "Best val loss", num: true, value: (e) => fmt.num(e.val_loss) },
              { label: "State", value: (e) => e.state },
            ],
            rows,
            { empty: "The search has not reported yet." },
          ),
          h("p", { class: "hint" }, "The ranked leaderboard, with each candidate's strategy, appears when the job ends."),
        ),
      );
      return;
    }
    clear(
      board,
      card(
        "Auto search: leaderboard",
        table(
          [
            { label: "#", num: true, value: (e) => e.rank },
            { label: "Strategy", value: (e) => e.strategy },
            { label: "Blocks", num: true, value: (e) => e.trainable_blocks },
            { label: "Learning rate", num: true, value: (e) => fmt.lr(e.learning_rate) },
            { label: "Best val accuracy", num: true, value: (e) => fmt.pct(e.val_accuracy) },
            { label: "Best val loss", num: true, value: (e) => fmt.num(e.val_loss) },
            { label: "Epochs", num: true, value: (e) => e.epochs },
            { label: "Seconds", num: true, value: (e) => fmt.num(e.seconds, 1) },
            { label: "", value: (e) => (e.chosen ? h("strong", {}, "chosen") : "") },
          ],
          final.map((e, i) => ({ ...e, rank: i + 1 })),
        ),
      ),
    );
  }

  function onEpoch(r) {
    state.last = r;
    if (r.phase === "search") {
      state.searched.add(`${r.candidate}:${r.epoch}`);
      // The search's candidates are ranked on their best validation epoch so far.
      const prev = state.search.get(r.candidate);
      const better = !prev || r.val_accuracy > prev.val_accuracy || (r.val_accuracy === prev.val_accuracy && r.val_loss < prev.val_loss);
      state.search.set(r.candidate, {
        ...(prev || { candidate: r.candidate }),
        trains: trainsOf(r),
        ...(better ? { val_accuracy: r.val_accuracy, val_loss: r.val_loss } : {}),
        epochs: r.epochs,
        state: r.epoch >= r.epochs ? "done" : `epoch ${r.epoch}/${r.epochs}`,
      });
      showBoard();
    } else {
      loss.push(0, { x: r.epoch, y: r.train_loss });
      loss.push(1, { x: r.epoch, y: r.val_loss });
      acc.push(0, { x: r.epoch, y: r.val_accuracy });
      loss.update();
      acc.update();
    }
    showStage(r);
    addStage(r);
    showProgress();
  }

  function onEvent(ev) {
    if (ev.type === "epoch") onEpoch(ev.data);
    else if (ev.type === "status") {
      state.status = ev.data.status;
      if (ev.data.error) clear(notice, alertBox(ev.data.error.message, { code: ev.data.error.code }));
      showStatus();
      showProgress();
    } else if (ev.type === "cancel_requested") {
      state.cancelRequested = true;
      showStatus();
    }
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const j = await jobs.cancel(id);
      state.status = j.status;
      state.cancelRequested = j.cancel_requested;
      showStatus();
      showProgress();
    } catch (err) {
      clear(notice, alertBox(err.message, { code: err.code }));
      cancel.disabled = false;
    }
  });

  clear(
    main,
    h(
      "div",
      { class: "page-head", dataset: { screen: "job" } },
      h("div", {}, h("div", { class: "crumbs" }, link("#/jobs", "Jobs"), " / ", job.id), h("h1", {}, `Job ${job.id}`)),
      h("div", { class: "actions" }, live, status, modelLink, cancel),
    ),
    h(
      "div",
      { class: "stats" },
      stat("dataset", link(`#/datasets/${encodeURIComponent(spec.dataset_id)}`, spec.dataset_id)),
      stat("base model", spec.base_model),
      stat("strategy", spec.strategy),
      stat("epochs", String(spec.epochs)),
      stat("learning rate", fmt.lr(spec.learning_rate)),
      stat("created", fmt.date(job.created_at)),
    ),
    notice,
    card("Progress", bar, barText),
    h("div", { class: "grid-main" }, card(null, loss.el), card(null, acc.el)),
    card("Stage: what trains, at which rate", stage, h("h3", {}, "Stages so far"), stages),
    board,
  );
  showStatus();
  showProgress();
  showBoard();

  function finish(j) {
    job = j;
    state.status = j.status;
    state.cancelRequested = j.cancel_requested;
    showStatus();
    showProgress();
    if (j.leaderboard) showBoard(j.leaderboard);
    if (j.model_id) {
      clear(modelLink, link(`#/models/${encodeURIComponent(j.model_id)}`, "Open the model", { class: "button primary", id: "open-model" }));
    }
    if (j.error) clear(notice, alertBox(j.error.message, { code: j.error.code }));
    if (j.status === "succeeded" && j.metrics.test_accuracy !== undefined) {
      notice.append(
        alertBox(`Finished: held-out test accuracy ${fmt.pct(j.metrics.test_accuracy)} (best epoch ${j.metrics.best_epoch}).`, {
          kind: "ok",
        }),
      );
    }
  }

  try {
    await jobs.stream(id, onEvent, ctx.signal);
  } catch (err) {
    if (ctx.signal.aborted || err.status === 404 || err.status === 401) throw err;
    notice.append(alertBox(`Live updates stopped: ${err.message}. Reload the page to follow the job again.`, { code: err.code }));
  }
  finish(await jobs.get(id, { signal: ctx.signal }));
  live.dataset.live = "ended";
  live.textContent = "final";
  live.title = "the job has ended: nothing more will change";
}

function stageText(groups) {
  const on = groups.filter((g) => g.trainable);
  if (!on.length) return "nothing trains";
  if (on.length === groups.length && new Set(on.map((g) => g.lr)).size === 1) return `everything at ${fmt.lr(on[0].lr)}`;
  return on.map((g) => `${g.group} ${fmt.lr(g.lr)}`).join(", ");
}

// What a search candidate trains, read from its epoch report's schedule (a report names
// its candidate by index only; the final leaderboard names the strategy).
function trainsOf(r) {
  const groups = r.schedule || [];
  const trainable = groups.filter((g) => g.trainable);
  if (trainable.length === groups.length) return "everything";
  const blocks = trainable.filter((g) => g.group !== "head").length;
  return blocks ? `head + ${blocks} group${blocks > 1 ? "s" : ""}` : "head only";
}
