// Datasets: the list with an upload (drag and drop or file picker), and one dataset.
import { datasets } from "../api.js";
import { go } from "../app.js";
import { barChart } from "../charts.js";
import { preview } from "../preview.js";
import { alertBox, card, clear, field, fmt, h, link, stat, table } from "../ui.js";

// Images read from the file this tab uploaded, by dataset id: the API serves no dataset
// images, so the dataset view can show thumbnails only for an upload made here.
const uploadedImages = new Map();

const ACCEPT = ".zip,.tar,.tar.gz,.tgz,.tar.bz2,.tar.xz,.csv";
const TASKS = [
  ["", "Detect from the file"],
  ["image_classification", "Images (ZIP or tar of class folders)"],
  ["text_classification", "Text (CSV with a text and a label column)"],
  ["tabular_classification", "Tabular (CSV with a label column and feature columns)"],
  ["image_multilabel", "Images, multi-label (archive with labels.csv: path,label as a|b)"],
  ["image_regression", "Images, regression (archive with labels.csv: path,number)"],
  ["text_multilabel", "Text, multi-label (labels joined by |)"],
  ["text_regression", "Text, regression (a number in the label column)"],
  ["tabular_multilabel", "Tabular, multi-label (labels joined by |)"],
  ["tabular_regression", "Tabular, regression (a number in the label column)"],
];

export async function datasetList(main, ctx) {
  const page = await datasets.list({ signal: ctx.signal });
  clear(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Datasets"), h("p", { class: "muted" }, `${page.total} in all`)),
    uploadCard(ctx),
    card(
      "Your datasets",
      table(
        [
          { label: "Name", value: (d) => link(`#/datasets/${encodeURIComponent(d.id)}`, d.name) },
          { label: "Task", value: (d) => taskLabel(d.task) },
          { label: "Samples", num: true, value: (d) => fmt.int(d.num_samples) },
          { label: "Classes", num: true, value: (d) => fmt.int(d.classes.length) },
          { label: "Train / val / test", value: (d) => splitText(d.splits) },
          { label: "Uploaded", value: (d) => fmt.date(d.created_at) },
        ],
        page.items,
        { empty: "No datasets yet: upload one above." },
      ),
    ),
  );
}

export function taskLabel(task) {
  const [modality, kind] = [task.split("_")[0], task.split("_").slice(1).join("_")];
  const name = { image: "images", text: "text", tabular: "tabular" }[modality];
  if (!name) return task;
  return kind === "classification" ? name : `${name}, ${kind === "multilabel" ? "multi-label" : kind}`;
}

function splitText(splits) {
  const order = ["train", "val", "test"];
  const keys = [...order.filter((k) => k in splits), ...Object.keys(splits).filter((k) => !order.includes(k))];
  return keys.map((k) => fmt.int(splits[k])).join(" / ");
}

function thumbnails(images) {
  return h(
    "div",
    { class: "thumbs" },
    images.map((im) =>
      h("figure", {}, h("img", { src: im.url, alt: im.name, loading: "lazy" }), h("figcaption", { title: im.name }, im.name.split("/").slice(-2, -1)[0] || im.name)),
    ),
  );
}

function uploadCard(ctx) {
  let file = null;
  let images = [];
  const previewBox = h("div", { class: "preview-box", "aria-live": "polite" });
  const forget = () => {
    for (const im of images) if (!im.kept) URL.revokeObjectURL(im.url);
    images = [];
  };
  ctx.onLeave(forget);
  const input = h("input", { id: "dataset-file", type: "file", accept: ACCEPT, class: "file-input" });
  const chosen = h("div", { class: "drop-chosen", "aria-live": "polite" }, "No file chosen");
  const zone = h(
    "div",
    { class: "drop", dataset: { testid: "dropzone" } },
    h("div", { class: "drop-title" }, "Drop a ZIP, tar or CSV here"),
    h("div", { class: "muted" }, "or"),
    h("label", { for: "dataset-file", class: "button" }, "Choose a file…"),
    input,
    chosen,
  );
  const name = h("input", { id: "dataset-name", name: "name", maxlength: "200", autocomplete: "off" });
  const task = h("select", { id: "dataset-task", name: "task" }, TASKS.map(([v, t]) => h("option", { value: v }, t)));
  const columns = h("datalist", { id: "csv-columns" });
  const labelCol = h("input", { id: "dataset-label-column", name: "label_column", value: "label", list: "csv-columns" });
  const textCol = h("input", { id: "dataset-text-column", name: "text_column", value: "text", list: "csv-columns" });
  const csvOptions = h(
    "fieldset",
    { class: "csv-options", hidden: true },
    h("legend", {}, "CSV columns"),
    h("div", { class: "grid-2" }, field("Label column", labelCol), field("Text column (text datasets)", textCol)),
    columns,
  );
  const bar = h("progress", { max: "100", value: "0", id: "upload-progress", "aria-label": "upload progress" });
  const barText = h("span", { class: "progress-text", "aria-live": "polite" });
  const progress = h("div", { class: "progress", hidden: true }, bar, barText);
  const result = h("div", { class: "upload-result" });
  const submit = h("button", { type: "submit", class: "primary", disabled: true }, "Upload");

  async function look(f) {
    forget();
    clear(previewBox);
    let seen = null;
    try {
      seen = await preview(f);
    } catch (err) {
      console.warn("no preview:", err);
    }
    if (!seen || file !== f) return;
    if (seen.kind === "images" && seen.images.length) {
      images = seen.images.map((im) => ({ name: im.name, url: URL.createObjectURL(im.blob) }));
      clear(previewBox, h("h3", {}, "A few images from the file (read here, before the upload)"), thumbnails(images));
    } else if (seen.kind === "csv" && seen.header.length) {
      clear(
        columns,
        seen.header.map((c) => h("option", { value: c })),
      );
      clear(
        previewBox,
        h("h3", {}, "The file's first rows"),
        table(
          seen.header.map((c, i) => ({ label: c, value: (r) => (r[i] ?? "").slice(0, 80) })),
          seen.rows,
          { empty: "Only a header row." },
        ),
      );
    }
  }

  function choose(f) {
    file = f;
    clear(result);
    if (f) look(f);
    clear(chosen, f ? `${f.name} · ${fmt.bytes(f.size)}` : "No file chosen");
    submit.disabled = !f;
    csvOptions.hidden = !(f && /\.csv$/i.test(f.name));
    if (f && !name.value) name.value = f.name.replace(/\.(zip|csv|tgz|tar(\.\w+)?)$/i, "");
  }
  input.addEventListener("change", () => choose(input.files[0] || null));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("drag");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("drag");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });

  const form = h(
    "form",
    {
      class: "upload-form",
      onsubmit: async (e) => {
        e.preventDefault();
        if (!file) return;
        const body = new FormData();
        body.append("file", file, file.name);
        if (name.value.trim()) body.append("name", name.value.trim());
        if (task.value) body.append("task", task.value);
        if (!csvOptions.hidden) {
          body.append("label_column", labelCol.value.trim() || "label");
          body.append("text_column", textCol.value.trim() || "text");
        }
        submit.disabled = true;
        progress.hidden = false;
        bar.value = 0;
        clear(result);
        try {
          const ds = await datasets.create(body, (loaded, total) => {
            bar.value = Math.round((loaded / total) * 100);
            barText.textContent =
              loaded < total ? `${bar.value}% · ${fmt.bytes(loaded)} of ${fmt.bytes(total)}` : "Uploaded; checking the data…";
          });
          bar.value = 100;
          barText.textContent = "Done";
          if (images.length) {
            for (const im of images) im.kept = true; // the dataset view shows them
            uploadedImages.set(ds.id, images);
          }
          go(`#/datasets/${encodeURIComponent(ds.id)}`);
        } catch (err) {
          progress.hidden = true;
          clear(result, alertBox(err.message, { code: err.code }));
        } finally {
          submit.disabled = !file;
        }
      },
    },
    zone,
    previewBox,
    h("div", { class: "grid-2" }, field("Name", name, "Optional; the file name by default."), field("Task", task, "An archive is images; a CSV is text if it has the text column, else tabular.")),
    csvOptions,
    progress,
    result,
    h("div", { class: "actions" }, submit),
  );
  return card("Upload a dataset", form);
}

export async function datasetView(main, ctx, id) {
  const ds = await datasets.get(id, { signal: ctx.signal });
  document.title = `${ds.name} · finetune`;
  const classes = ds.classes;
  const counts = classes.map((c) => ds.class_counts[c] ?? 0);
  const chart = barChart({
    title: "Samples per class",
    labels: classes,
    values: counts,
    xLabel: "class",
    yLabel: "samples",
    description: `Samples per class: ${classes.map((c, i) => `${c} ${counts[i]}`).join(", ")}`,
  });
  ctx.onLeave(chart.destroy);
  const splits = Object.entries(ds.splits);
  const total = ds.num_samples || 1;
  const trainHref = `#/jobs/new?dataset=${encodeURIComponent(ds.id)}`;
  const del = h("button", { type: "button", class: "danger ghost" }, "Delete dataset");
  const delResult = h("div");
  del.addEventListener("click", async () => {
    if (!window.confirm(`Delete dataset ${ds.name}? Its models stay.`)) return;
    try {
      await datasets.remove(ds.id);
      go("#/datasets");
    } catch (err) {
      clear(delResult, alertBox(err.message, { code: err.code }));
    }
  });
  clear(
    main,
    h(
      "div",
      { class: "page-head", dataset: { screen: "dataset" } },
      h("div", {}, h("div", { class: "crumbs" }, link("#/datasets", "Datasets"), " / ", ds.id), h("h1", {}, ds.name)),
      h("div", { class: "actions" }, link(trainHref, "Train a model", { class: "button primary" })),
    ),
    h(
      "div",
      { class: "stats" },
      stat("samples", fmt.int(ds.num_samples)),
      stat("classes", fmt.int(classes.length), { dataset: { testid: "class-count" } }),
      stat("task", taskLabel(ds.task)),
      stat("status", ds.status),
      stat("uploaded", fmt.date(ds.created_at)),
    ),
    h(
      "div",
      { class: "grid-main" },
      card("Classes", chart.el),
      card(
        "Splits",
        table(
          [
            { label: "Split", value: (r) => r[0] },
            { label: "Samples", num: true, value: (r) => fmt.int(r[1]) },
            { label: "Share", num: true, value: (r) => fmt.pct(r[1] / total) },
          ],
          splits,
        ),
        h(
          "p",
          { class: "hint" },
          "The test split is held out: training never sees it, and a model's metrics are measured on it. " +
            "The validation split is taken from train by each job (val_fraction).",
        ),
      ),
    ),
    uploadedImages.has(ds.id)
      ? card("A few images (from the file uploaded in this tab)", thumbnails(uploadedImages.get(ds.id)))
      : null,
    card(
      "Class counts",
      table(
        [
          { label: "Class", value: (r) => r[0] },
          { label: "Samples", num: true, value: (r) => fmt.int(r[1]) },
        ],
        classes.map((c, i) => [c, counts[i]]),
      ),
    ),
    h("div", { class: "actions end" }, del),
    delResult,
  );
}
