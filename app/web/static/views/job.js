// One job, live: progress with ETA, curves, the strategy's stages and auto's leaderboard,
// followed over GET /v1/jobs/{id}/events; cancel.
import { jobs } from "../api.js";
import { COLORS, lineChart } from "../charts.js";
import { TERMINAL, alertBox, badge, card, clear, fmt, h, link, stat, table } from "../ui.js";

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
    const what = r.stage === "probe" ? PROBE_TEXT : stageText(r.schedule || []);
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
      const probeOnly = r && r.stage === "probe";
      barText.textContent = `Done · 100% · ${r ? (probeOnly ? PROBE_TEXT : `${r.epoch} epochs`) : ""}`;
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
    // auto: the search, then the final training (about auto_budget_epochs epochs in all).
    // A fine-tuned winner's final training continues its own search run (its epochs
    // after those the search gave it); a probe's (epoch 0) counts as one.
    const searched = state.searched.size;
    const search = r.phase === "search";
    const winner = search || r.candidate == null ? 0 : [...state.searched].filter((k) =>
      k.startsWith(`${r.candidate}:`)).length;
    const done = searched + (search ? 0 : Math.max(1, r.epoch - winner));
    const total = search
      ? Math.max(spec.auto_budget_epochs || 0, searched + 1)
      : searched + Math.max(1, r.epochs - winner);
    bar.value = Math.round(Math.min(done / total, 1) * 100);
    const end = TERMINAL.has(state.status) ? ` · ${state.status}` : "";
    barText.textContent = search
      ? `Stage 1 of 2, search: ${candidateName(r)}, epoch ${r.epoch} of ${r.epochs} · ${bar.value}% overall${end}`
      : `Stage 2 of 2, the chosen strategy: epoch ${r.epoch} of ${r.epochs} · ${bar.value}% overall · ` +
        (end ? state.status : `ETA ${fmt.duration(r.eta_seconds)}`);
  }

  function showStage(r) {
    if (r.stage === "probe") {
      // Epoch 0: the head fitted exactly on the frozen backbone's features (no schedule).
      clear(
        stage,
        h(
          "p",
          {},
          r.phase === "search" ? (r.candidate === "linear" ? "Search, the linear model: " : "Search, the probe: ") : "",
          `${PROBE_TEXT}: the head fitted on frozen features${r.C !== undefined ? ` (C = ${r.C})` : ""}, `,
          `${fmt.int(r.trainable_params)} trainable parameters.`,
        ),
        table(
          [
            { label: "Group (top → bottom)", value: () => "head" },
            { label: "Trains", value: () => "yes, exact fit" },
            { label: "Parameters", num: true, value: () => fmt.int(r.trainable_params) },
          ],
          [r],
        ),
      );
      return;
    }
    const groups = r.schedule || [];
    const training = groups.filter((g) => g.trainable);
    const frozen = groups.length - training.length;
    clear(
      stage,
      h(
        "p",
        {},
        r.phase === "search" ? `Search, ${candidateName(r)}, ` : "",
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
      // The probe (candidate "probe") first, then the numbered candidates.
      const order = (e) => (typeof e.candidate === "number" ? e.candidate : -1);
      const rows = [...state.search.values()].sort((a, b) => order(a) - order(b));
      clear(
        board,
        card(
          "Auto search: candidates (live)",
          table(
            [
              { label: "Candidate", num: true, value: (e) => (typeof e.candidate === "number" ? e.candidate + 1 : e.candidate) },
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
            { label: "Strategy", value: (e) => (e.stage === "linear" ? "linear model" : e.strategy) },
            { label: "Blocks", num: true, value: (e) => e.trainable_blocks },
            { label: "Learning rate", num: true, value: (e) => (e.learning_rate === null ? "– (exact probe)" : fmt.lr(e.learning_rate)) },
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
      acc.push(0, { x: r.epoch, y: r.val_score ?? r.val_accuracy }); // the task's score (R², mAP)
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
      stat("epochs", spec.epochs === null || spec.epochs === undefined ? "automatic" : String(spec.epochs)),
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

const PROBE_TEXT = "exact linear probe";

const LINEAR_TEXT = "linear model (no hidden layer, by the exact probe)";

// A search report names its candidate by index, or rung 0: "probe" for the exact probe,
// "linear" for the linear model (a tabular search from random weights).
function candidateName(r) {
  if (typeof r.candidate === "number") return `candidate ${r.candidate + 1}`;
  return r.candidate === "linear" ? `the ${LINEAR_TEXT}` : `the ${PROBE_TEXT}`;
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
  if (r.candidate === "linear") return LINEAR_TEXT;
  if (r.stage === "probe") return `head only (${PROBE_TEXT})`;
  const groups = r.schedule || [];
  const trainable = groups.filter((g) => g.trainable);
  if (trainable.length === groups.length) return "everything";
  const blocks = trainable.filter((g) => g.group !== "head").length;
  return blocks ? `head + ${blocks} group${blocks > 1 ? "s" : ""}` : "head only";
}
