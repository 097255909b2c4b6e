// The dashboard: hash routes, sign-in, and the screens (datasets, jobs, models).
import { ApiError, auth, datasets } from "./api.js";
import { alertBox, clear, h, link } from "./ui.js";
import { datasetList, datasetView } from "./views/datasets.js";
import { jobView } from "./views/job.js";
import { jobForm, jobList } from "./views/jobs.js";
import { modelList, modelView } from "./views/models.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signout = document.getElementById("signout");

const ROUTES = [
  [/^\/datasets$/, datasetList, "Datasets"],
  [/^\/datasets\/([^/]+)$/, datasetView, "Dataset"],
  [/^\/jobs$/, jobList, "Jobs"],
  [/^\/jobs\/new$/, jobForm, "New job"],
  [/^\/jobs\/([^/]+)$/, jobView, "Job"],
  [/^\/models$/, modelList, "Models"],
  [/^\/models\/([^/]+)$/, modelView, "Model"],
];

let current = null; // {controller, cleanups}
let signInNotice = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/datasets";
  const [path, qs] = raw.split("?");
  return { path, query: new URLSearchParams(qs || "") };
}

function leave() {
  if (!current) return;
  current.controller.abort();
  for (const fn of current.cleanups) {
    try {
      fn();
    } catch (err) {
      console.warn("cleanup", err);
    }
  }
  current = null;
}

export function notFound(target, message) {
  document.title = "Not found · finetune";
  clear(
    target,
    h(
      "section",
      { class: "card not-found", dataset: { screen: "not-found" } },
      h("h1", {}, "Not found"),
      h("p", {}, message || "There is nothing at this address."),
      h("p", {}, "It may have been deleted, or it belongs to another key. ", link("#/datasets", "Back to datasets")),
    ),
  );
}

async function render() {
  leave();
  const { path, query } = parseHash();
  if (!auth.get()) {
    showSignIn(path === "/signin" ? "/datasets" : path + (query.toString() ? `?${query}` : ""));
    return;
  }
  nav.hidden = false;
  signout.hidden = false;
  for (const a of nav.querySelectorAll("a")) {
    const on = path.startsWith(a.getAttribute("href").slice(1));
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (path === "/signin") {
    location.hash = "#/datasets";
    return;
  }
  const controller = new AbortController();
  const ctx = { controller, signal: controller.signal, cleanups: [], query };
  ctx.onLeave = (fn) => ctx.cleanups.push(fn);
  current = ctx;
  for (const [re, view, title] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    document.title = `${title} · finetune`;
    clear(main, h("p", { class: "loading", "aria-busy": "true" }, "Loading…"));
    try {
      await view(main, ctx, ...m.slice(1).map(decodeURIComponent));
    } catch (err) {
      if (ctx.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) notFound(main, err.message);
      else if (err instanceof ApiError && err.status === 401) return;
      else {
        clear(main, alertBox(err.message || String(err), { code: err.code }));
        if (!(err instanceof ApiError)) console.error(err);
      }
    }
    focusMain();
    return;
  }
  notFound(main);
}

function focusMain() {
  const heading = main.querySelector("h1");
  (heading || main).setAttribute("tabindex", "-1");
  (heading || main).focus({ preventScroll: true });
}

function showSignIn(next) {
  nav.hidden = true;
  signout.hidden = true;
  document.title = "Sign in · finetune";
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "ft_…",
  });
  const error = h("div", { class: "form-error", "aria-live": "assertive" });
  if (signInNotice) error.append(alertBox(signInNotice));
  signInNotice = null;
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    {
      class: "card signin",
      dataset: { screen: "signin" },
      onsubmit: async (e) => {
        e.preventDefault();
        clear(error);
        button.disabled = true;
        auth.set(input.value.trim());
        try {
          await datasets.list({ limit: 1 });
          go(`#${next}`);
        } catch (err) {
          auth.clear();
          clear(error, alertBox(err.message, { code: err.code }));
          input.focus();
          input.select();
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", {}, "Sign in"),
    h(
      "p",
      { class: "muted" },
      "Use an API key of this service: the admin key printed at the first start of ",
      h("code", {}, "finetune serve"),
      ", or one from ",
      h("code", {}, "finetune keys create NAME"),
      ". It is kept in this tab only (session storage) and sent as an Authorization header.",
    ),
    h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), input),
    error,
    h("div", { class: "actions" }, button),
  );
  clear(main, form);
  input.focus();
}

signout.addEventListener("click", () => {
  auth.clear();
  go("#/datasets");
});

// Navigate, rendering even when the hash is already the target (no hashchange then).
export function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

window.addEventListener("finetune:unauthorized", (e) => {
  if (main.querySelector('[data-screen="signin"]')) return; // it shows the error itself
  signInNotice = `Signed out: ${e.detail.message}`;
  render();
});
window.addEventListener("hashchange", render);
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault(); // the hash is the route; move focus instead
  focusMain();
});
render();
