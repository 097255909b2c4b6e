// Charts with Chart.js (vendor/chart.umd.min.js, loaded before this module as window.Chart).
import { h } from "./ui.js";

export const COLORS = {
  train: "#d9480f",
  val: "#1c7ed6",
  acc: "#2b8a3e",
  bar: "#4263eb",
};

const Chart = window.Chart;
Chart.defaults.font.family = getComputedStyle(document.documentElement).getPropertyValue("--font").trim() || "system-ui, sans-serif";
Chart.defaults.color = "#495057";
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;

function axis(title, extra = {}) {
  return { title: { display: true, text: title, font: { weight: "600" } }, grid: { color: "#e9ecef" }, ...extra };
}

// A chart in its own sized box, with a text title and an accessible description.
function frame(title, description) {
  const canvas = h("canvas", { role: "img", "aria-label": description || title });
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title), h("div", { class: "chart-box" }, canvas));
  return { box, canvas };
}

// Lines over epochs: series = [{label, color, points: [{x, y}]}].
export function lineChart({ title, xLabel = "epoch", yLabel, series, yMin, yMax, description }) {
  const { box, canvas } = frame(title, description);
  const chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: series.map((s) => ({
        label: s.label,
        data: s.points,
        borderColor: s.color,
        backgroundColor: s.color,
        borderWidth: 2,
        pointRadius: 2.5,
        tension: 0,
      })),
    },
    options: {
      parsing: true,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: axis(xLabel, { type: "linear", ticks: { precision: 0 }, suggestedMin: 1, suggestedMax: 2 }),
        y: axis(yLabel, { min: yMin, max: yMax }),
      },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    },
  });
  return {
    el: box,
    chart,
    push(i, point) {
      chart.data.datasets[i].data.push(point);
    },
    set(i, points) {
      chart.data.datasets[i].data = points;
    },
    update() {
      chart.update("none");
    },
    destroy() {
      chart.destroy();
    },
  };
}

export function barChart({ title, labels, values, xLabel, yLabel, description }) {
  const { box, canvas } = frame(title, description);
  const chart = new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label: yLabel, data: values, backgroundColor: COLORS.bar, borderRadius: 3 }] },
    options: {
      scales: {
        // every class named while they fit; past ~40, Chart.js skips some (the table lists all)
        x: axis(xLabel, { grid: { display: false }, ticks: { autoSkip: labels.length > 40, maxRotation: 60 } }),
        y: axis(yLabel, { beginAtZero: true, ticks: { precision: 0 } }),
      },
      plugins: { legend: { display: false } },
    },
  });
  return { el: box, chart, destroy: () => chart.destroy() };
}

// A confusion matrix as a heat map (an HTML table: readable, copyable, no canvas needed).
// The shade of a cell is its share of the true class's row (its recall for the diagonal).
export function confusionHeatmap(classes, matrix) {
  const head = h(
    "tr",
    {},
    h("th", { class: "cm-corner", scope: "col" }, h("span", { class: "sr-only" }, "true class")),
    classes.map((c) => h("th", { scope: "col", class: "cm-col", title: c }, h("span", {}, c))),
  );
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return h(
      "tr",
      {},
      h("th", { scope: "row", class: "cm-row", title: classes[i] }, classes[i]),
      row.map((v, j) => {
        const share = v / total;
        const diag = i === j;
        const rgb = diag ? "43, 138, 62" : "224, 49, 49";
        const td = h(
          "td",
          {
            class: "cm-cell num",
            title: `true ${classes[i]} → predicted ${classes[j]}: ${v} (${(share * 100).toFixed(0)}% of ${classes[i]})`,
          },
          String(v),
        );
        td.style.backgroundColor = v ? `rgba(${rgb}, ${0.12 + 0.78 * share})` : "transparent";
        td.style.color = share > 0.55 ? "#fff" : "";
        return td;
      }),
    );
  });
  return h(
    "figure",
    { class: "cm" },
    h("figcaption", {}, "Confusion matrix (held-out test split)"),
    h("div", { class: "cm-axis-x" }, "predicted class →"),
    h(
      "div",
      { class: "cm-body" },
      h("div", { class: "cm-axis-y" }, "true class ↓"),
      h("div", { class: "table-wrap" }, h("table", { class: "cm-table" }, h("thead", {}, head), h("tbody", {}, rows))),
    ),
    h(
      "p",
      { class: "hint" },
      "Rows are true classes, columns predictions. Green: correct; red: confusions; darker is a larger share of the row.",
    ),
  );
}
