// Reward models: the deployed slugs and versions (GET /v1/models) and "Fine Tunes", the training jobs as OpenPipe's
// console names its status list (GET /v1/reward-models, docs/LIFECYCLE.md) with state, progress, TEST accuracy and
// reward distribution. Pages poll every 2 s while a job is PENDING, QUEUED or TRAINING, and stop when the user
// leaves. Models also come from a published checkpoint (Import) or a judge's stored scores (Distil): sources.js
// holds those dialogs.

import { api } from "./api.js";
import {
  badge, copyButton, errorBox, facts, fill, fmtNum, fmtPct, fmtTime, h, link, mono, progressBar, route, table,
} from "./dom.js";
import { openDistillDialog, openImportDialog } from "./sources.js";

const ACTIVE = new Set(["PENDING", "QUEUED", "TRAINING"]);
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function testMetrics(job) {
  const m = job.metrics || {};
  return m.test && typeof m.test === "object" ? m.test : m;
}

function pinned(job) {
  return job.version ? `${job.slug}@${job.version}` : job.slug;
}

/** Run `load` now and again every POLL_MS while it returns true and the page is shown. */
function poll(ctx, load) {
  let timer = null;
  ctx.onLeave(() => clearTimeout(timer));
  const tick = async () => {
    const again = await load();
    if (again && ctx.alive()) timer = setTimeout(tick, POLL_MS);
  };
  return tick();
}

export async function list(ctx) {
  const deployed = h("section#deployed", {}, h("h2", {}, "Deployed"), h("p.muted", {}, "Loading…"));
  const jobs = h("section#jobs", {}, h("h2", {}, "Fine Tunes"), h("p.muted", {}, "Loading…"));
  const sources = h("div.actions", {},
    h("button#import-button", { type: "button", on: { click: openImportDialog } }, "Import a reward model"),
    h("button#distill-button", { type: "button", on: { click: openDistillDialog } }, "Distil a judge"));
  fill(ctx.main, h("div.title-row", {}, h("h1", {}, "Reward models"), sources), deployed, jobs);
  const showDeployed = api("GET", "/v1/models").then((listing) => {
    const bySlug = new Map();
    for (const m of listing.data) {
      const info = m.rewardgate;
      if (!info || info.kind !== "reward_model") continue;
      if (!bySlug.has(info.slug)) bySlug.set(info.slug, []);
      bySlug.get(info.slug).push(info);
    }
    fill(deployed, h("h2", {}, "Deployed"), table(
      [
        { label: "Slug", cell: ([slug]) => h("span", {}, mono(slug), " ", copyButton(slug, "Copy slug")) },
        { label: "Versions", cell: ([, versions]) => h("span.chips", {}, versions.map((v) => h("code.chip", { title: v.latest ? "newest: the bare slug means this one" : "" }, v.version + (v.latest ? " (newest)" : "")))) },
        { label: "Use", cell: ([slug]) => h("code", {}, `op-criteria: ["${slug}"]`) },
      ],
      [...bySlug.entries()],
      { empty: "No reward model is deployed yet: train one from a dataset." },
    ));
  }).catch((err) => fill(deployed, h("h2", {}, "Deployed"), errorBox(err)));
  await poll(ctx, async () => {
    try {
      const { data } = await api("GET", "/v1/reward-models");
      if (!ctx.alive()) return false;
      fill(jobs, h("h2", {}, "Fine Tunes"), jobsTable(data));
      return data.some((job) => ACTIVE.has(job.state));
    } catch (err) {
      if (ctx.alive()) fill(jobs, h("h2", {}, "Fine Tunes"), errorBox(err));
      return false;
    }
  });
  await showDeployed;
}

/** A job's headline TEST number: pairwise accuracy, or for a model of rated responses Spearman's rho. */
function headline(metrics) {
  if (metrics.accuracy !== undefined && metrics.accuracy !== null) return fmtPct(metrics.accuracy);
  if (metrics.spearman !== undefined && metrics.spearman !== null) return `ρ ${fmtNum(metrics.spearman)}`;
  return "—";
}

/** TEST metrics as the data's kind has them: pairs (accuracy), rated responses (correlations), an import's calibration. */
function metricFacts(job, metrics) {
  if (!Object.keys(metrics).length) return h("p.muted", {}, "Measured on the TEST split when training ends.");
  if (metrics.spearman !== undefined) {
    return facts([
      ["Spearman with the rewards", h("span#test-spearman", {}, fmtNum(metrics.spearman))],
      ["Pearson", fmtNum(metrics.pearson)],
      metrics.auc !== null && metrics.auc !== undefined ? ["AUC (0/1 labels)", fmtNum(metrics.auc)] : null,
      [`PASS/FAIL agreement at ${fmtNum(metrics.pass_threshold)}`, fmtPct(metrics.pass_accuracy)],
      ["Rated responses", fmtNum(metrics.count)],
      ["Longer-answer baseline (Spearman)", fmtNum(metrics.length_spearman)],
    ]);
  }
  if (job.kind === "import") {
    return metrics.accuracy === undefined
      ? facts([["Calibration responses", fmtNum(metrics.count)]])
      : facts([
        ["Pairwise accuracy on the calibration pairs", h("span#test-accuracy", {}, fmtPct(metrics.accuracy))],
        ["Mean margin", fmtNum(metrics.mean_margin)],
        ["Pairs", fmtNum(metrics.count)],
      ]);
  }
  return facts([
    ["Pairwise accuracy", h("span#test-accuracy", {}, fmtPct(metrics.accuracy))],
    ["Mean margin", fmtNum(metrics.mean_margin)],
    ["Pairs", fmtNum(metrics.count)],
    ["Longer-answer baseline", fmtPct(metrics.length_baseline_accuracy)],
  ]);
}

function jobsTable(jobs, empty = "No fine tunes yet: open a dataset and press Reward Model.") {
  return table(
    [
      { label: "Job", cell: (job) => link(route("models", job.id), mono(job.id)) },
      { label: "Slug", cell: (job) => mono(pinned(job)) },
      { label: "State", cell: (job) => badge(job.state) },
      { label: "Progress", cell: (job) => progressBar(job.progress && job.progress.step, job.progress && job.progress.total) },
      { label: "TEST", num: true, cell: (job) => headline(testMetrics(job)) },
      { label: "Base model", cell: (job) => job.base_model || "—" },
      { label: "Dataset", cell: (job) => (job.dataset_id ? link(route("datasets", job.dataset_id), mono(job.dataset_id)) : "—") },
      { label: "Created", cell: (job) => h("span.nowrap", {}, fmtTime(job.created_at)) },
    ],
    jobs,
    { empty, onRow: (job) => { location.hash = route("models", job.id); } },
  );
}

export async function detail(ctx) {
  const [id] = ctx.params;
  const path = `/v1/reward-models/${encodeURIComponent(id)}`;
  const crumbs = () => h("p.crumbs", {}, link("#/models", "Reward models"), " / ", mono(id));
  fill(ctx.main, crumbs(), h("p.muted", {}, "Loading…"));
  const errors = h("div.form-errors");
  let shown = false;
  await poll(ctx, async () => {
    let job, all;
    try {
      [job, all] = await Promise.all([api("GET", path), api("GET", "/v1/reward-models")]);
    } catch (err) {
      if (ctx.alive() && shown) fill(errors, h("div.poll-error", {}, errorBox(err)));
      else if (ctx.alive()) fill(ctx.main, crumbs(), errorBox(err));
      return shown;  // a page already shown keeps polling through a passing error
    }
    if (!ctx.alive()) return false;
    for (const stale of errors.querySelectorAll(".poll-error")) stale.remove();
    fill(ctx.main, ...jobPage(job, all.data.filter((j) => j.slug === job.slug), errors, ctx));
    shown = true;
    return ACTIVE.has(job.state);
  });
}

function jobPage(job, versions, errors, ctx) {
  const p = job.progress || {};
  const hp = job.hyperparameters || {};
  const metrics = testMetrics(job);
  const cancel = h("button.danger#cancel-job", { type: "button", hidden: !ACTIVE.has(job.state) }, "Cancel");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api("POST", `/v1/reward-models/${encodeURIComponent(job.id)}/cancel`);
      ctx.rerender();
    } catch (err) {
      fill(errors, errorBox(err));
      cancel.disabled = false;
    }
  });
  return [
    h("p.crumbs", {}, link("#/models", "Reward models"), " / ", mono(job.id)),
    h("div.title-row", {},
      h("h1", {}, mono(pinned(job)), " ", h("span#job-state", {}, badge(job.state))),
      h("div.actions", {}, copyButton(job.slug, "Copy slug"), job.version ? copyButton(pinned(job), `Copy ${job.version}`) : null, cancel)),
    errors,
    job.error ? h("div.error", { role: "alert" }, h("strong", {}, job.kind === "import" ? "Import failed" : "Training failed"), ": ", job.error) : null,
    facts([
      ["Progress", h("span.progress-row", {}, progressBar(p.step, p.total),
        ` loss ${fmtNum(p.loss)} · accuracy ${fmtPct(p.accuracy)}`)],
      [job.kind === "import" ? "Calibration dataset" : "Dataset", job.dataset_id ? link(route("datasets", job.dataset_id), mono(job.dataset_id)) : "none"],
      [job.kind === "import" ? "Imported from" : "Base model", job.base_model || "default"],
      job.kind === "import" ? null : ["Hyperparameters", `batch size ${hp.batch_size ?? "auto"} · learning rate ${hp.learning_rate ?? "—"} · epochs ${hp.epochs ?? "—"}`],
      ["Created · updated", `${fmtTime(job.created_at)} · ${fmtTime(job.updated_at)}`],
      job.resumed ? ["Resumed", `${job.resumed} time${job.resumed === 1 ? "" : "s"} after a restart`] : null,
      job.state === "DEPLOYED" ? ["Use it", h("code", {}, `op-criteria: ["${job.slug}"]`)] : null,
    ]),
    h("h2", {}, job.kind === "import" ? "Calibration" : "TEST metrics"),
    metricFacts(job, metrics),
    h("h2", {}, "Reward distribution"),
    rewardDistribution(job.reward_stats),
    h("h2", {}, "Versions of ", mono(job.slug)),
    jobsTable(versions, "No other versions."),
  ];
}

/** mean, std and count; a histogram when the stats carry one ({edges, counts}), else the normal curve they imply. */
function rewardDistribution(stats) {
  if (!stats || stats.mean === undefined || stats.mean === null) return h("p.muted", {}, "Known once the model is trained.");
  const summary = h("p", {}, `mean ${fmtNum(stats.mean)} · std ${fmtNum(stats.std)} · ${fmtNum(stats.count)} rewards` +
    (stats.split ? ` on ${stats.split}` : "") + ". Gateway scores are sigmoid((r − mean) / std): 0.5 is an average answer.");
  const width = 360;
  const height = 90;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 14}`);
  svg.setAttribute("class", "distribution");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  const hist = stats.histogram;
  if (hist && Array.isArray(hist.counts) && Array.isArray(hist.edges) && hist.edges.length === hist.counts.length + 1) {
    const top = Math.max(1, ...hist.counts);
    const w = width / hist.counts.length;
    hist.counts.forEach((c, i) => add("rect", { x: i * w + 1, y: height - (height * c) / top, width: w - 2, height: (height * c) / top, class: "bar" }));
    add("text", { x: 0, y: height + 12, class: "axis" }, fmtNum(hist.edges[0]));
    add("text", { x: width, y: height + 12, class: "axis", "text-anchor": "end" }, fmtNum(hist.edges[hist.edges.length - 1]));
  } else if (stats.std > 0) {
    const lo = stats.mean - 4 * stats.std;
    const x = (r) => ((r - lo) / (8 * stats.std)) * width;
    const y = (r) => height - height * Math.exp(-0.5 * ((r - stats.mean) / stats.std) ** 2);
    const points = Array.from({ length: 81 }, (_, i) => lo + (i / 80) * 8 * stats.std);
    add("rect", { x: x(stats.mean - stats.std), y: 0, width: x(stats.mean + stats.std) - x(stats.mean - stats.std), height, class: "band" });
    add("path", { d: "M" + points.map((r) => `${x(r).toFixed(1)},${y(r).toFixed(1)}`).join(" L"), class: "curve" });
    add("line", { x1: x(stats.mean), x2: x(stats.mean), y1: 0, y2: height, class: "mean" });
    add("text", { x: 0, y: height + 12, class: "axis" }, fmtNum(lo));
    add("text", { x: x(stats.mean), y: height + 12, class: "axis", "text-anchor": "middle" }, fmtNum(stats.mean));
    add("text", { x: width, y: height + 12, class: "axis", "text-anchor": "end" }, fmtNum(stats.mean + 4 * stats.std));
  }
  return h("div.reward-stats", {}, summary, svg.childNodes.length ? svg : null);
}
