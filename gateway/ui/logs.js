// Logs: the stored best-of-N requests (GET /v1/logs, filtered by metadata and model) and one log's candidates side
// by side, best first, with the combined score, every criterion's result, and a "this one is better" button that
// sends feedback (POST /v1/feedback, docs/LIFECYCLE.md) into a dataset.

import { api } from "./api.js";
import {
  badge, contentText, copyButton, errorBox, facts, field, fill, fmtJson, fmtMs, fmtNum, fmtTime, h, link, mono, route,
  table,
} from "./dom.js";

const FEEDBACK_DATASET = "rewardgate.feedbackDataset";

/** "app=support, user=42" -> {app: "support", user: "42"}; pieces without "=" are ignored. */
function parseMetadata(text) {
  const out = {};
  for (const piece of text.split(/[,\n]/)) {
    const at = piece.indexOf("=");
    if (at > 0) out[piece.slice(0, at).trim()] = piece.slice(at + 1).trim();
  }
  return out;
}

function metadataChips(metadata) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return h("span.muted", {}, "—");
  return h("span.chips", {}, entries.map(([k, v]) => h("span.chip", {}, `${k}=${v}`)));
}

function criteriaList(versions) {
  const entries = Object.entries(versions || {});
  if (!entries.length) return h("span.muted", {}, "—");
  return h("span.chips", {}, entries.map(([slug, version]) => h("code.chip", {}, `${slug}@${version}`)));
}

export async function list(ctx) {
  const metadata = {};
  for (const [k, v] of ctx.query) if (k.startsWith("metadata.")) metadata[k.slice(9)] = v;
  const model = ctx.query.get("model") || "";
  const metaInput = h("input#filter-metadata", {
    placeholder: "app=support, user=42",
    value: Object.entries(metadata).map(([k, v]) => `${k}=${v}`).join(", "),
  });
  const modelInput = h("input#filter-model", { placeholder: "openai:gpt-4o-mini", value: model });
  const apply = (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(parseMetadata(metaInput.value))) params.set(`metadata.${k}`, v);
    if (modelInput.value.trim()) params.set("model", modelInput.value.trim());
    location.hash = `#/logs${[...params].length ? "?" + params : ""}`;
  };
  const filters = h("form.toolbar#log-filters", { on: { submit: apply } },
    field("Metadata", metaInput), field("Model", modelInput),
    h("button.primary", { type: "submit" }, "Filter"), h("a.button", { href: "#/logs" }, "Clear"));
  const holder = h("div", {}, h("p.muted", {}, "Loading…"));
  fill(ctx.main, h("h1", {}, "Logs"), filters, holder);

  // since / before (ISO 8601) are not in the form, but a link may carry them.
  const query = { limit: 50, model, since: ctx.query.get("since"), before: ctx.query.get("before") };
  for (const [k, v] of Object.entries(metadata)) query[`metadata.${k}`] = v;
  const rows = [];
  const more = h("button#logs-more", { type: "button", hidden: true }, "Older logs");
  const columns = [
    { label: "Time", cell: (log) => h("span.nowrap", {}, fmtTime(log.created_at)) },
    { label: "Log", cell: (log) => link(route("logs", log.id), mono(log.id)) },
    { label: "Model", cell: (log) => log.model },
    { label: "Candidates", num: true, cell: (log) => candidateCount(log) },
    { label: "Best score", num: true, cell: (log) => fmtNum(log.candidates[0] && log.candidates[0].score) },
    { label: "Criteria", cell: (log) => criteriaList(log.criteria_versions) },
    { label: "Metadata", cell: (log) => metadataChips(log.metadata) },
    { label: "Total", num: true, cell: (log) => fmtMs(log.latencies && log.latencies.total_ms) },
  ];
  const load = async (cursor) => {
    more.disabled = true;
    try {
      const page = await api("GET", "/v1/logs", { query: { ...query, cursor } });
      if (!ctx.alive()) return;
      rows.push(...page.data);
      const empty = Object.keys(metadata).length || model ? "No logs match." : "No logs yet: send a request with store: true.";
      fill(holder, table(columns, rows, { empty, onRow: (log) => { location.hash = route("logs", log.id); } }), more);
      more.hidden = !page.has_more;
      more.onclick = () => load(page.next_cursor);
    } catch (err) {
      holder.append(errorBox(err));
    } finally {
      more.disabled = false;
    }
  };
  await load(null);
}

function candidateCount(log) {
  const ok = log.candidates.filter((c) => c.status === "ok").length;
  return ok === log.candidates.length ? String(ok) : `${ok} / ${log.candidates.length}`;
}

export async function detail(ctx) {
  const [id] = ctx.params;
  fill(ctx.main, h("p.crumbs", {}, link("#/logs", "Logs"), " / ", mono(id)), h("p.muted", {}, "Loading…"));
  const log = await api("GET", `/v1/logs/${encodeURIComponent(id)}`);
  if (!ctx.alive()) return;
  const lat = log.latencies || {};
  const messages = Array.isArray(log.request && log.request.messages) ? log.request.messages : [];
  const status = h("div#feedback-status", { "aria-live": "polite" });
  const datasetInput = h("input#feedback-dataset", {
    list: "feedback-datasets", value: localStorage.getItem(FEEDBACK_DATASET) || "feedback", required: true,
  });
  const datalist = h("datalist#feedback-datasets");
  const produced = log.candidates.filter((c) => c.status === "ok").length;
  const cards = log.candidates.map((c, position) => candidateCard(log, c, produced, async (button, card) => {
    const dataset = datasetInput.value.trim();
    if (!dataset) {
      fill(status, errorBox(new Error("name the dataset that receives the feedback")));
      return;
    }
    for (const b of ctx.main.querySelectorAll("button.feedback")) b.disabled = true;
    fill(status, h("span.muted", {}, "Sending feedback…"));
    try {
      const body = { log_id: log.id, choice_index: c.rank ?? position, dataset };
      const answer = await api("POST", "/v1/feedback", { json: body });
      localStorage.setItem(FEEDBACK_DATASET, dataset);
      const ds = answer.dataset && typeof answer.dataset === "object" ? answer.dataset : { id: answer.dataset || dataset, name: answer.dataset || dataset };
      card.classList.add("picked");
      button.textContent = "Your choice";
      fill(status, h("span.ok-text", {}, `Added ${answer.added} pair${answer.added === 1 ? "" : "s"} to dataset `),
        link(route("datasets", ds.id || ds.name), ds.name || ds.id), ".",
        (answer.skipped || []).map((s) => h("div.muted.small", {}, `skipped candidate ${s.choice_index}: ${s.reason}`)));
    } catch (err) {
      fill(status, errorBox(err));
    } finally {
      for (const b of ctx.main.querySelectorAll("button.feedback")) b.disabled = b.dataset.unavailable === "true";
    }
  }));
  fill(
    ctx.main,
    h("p.crumbs", {}, link("#/logs", "Logs"), " / ", mono(log.id), " ", copyButton(log.id)),
    facts([
      ["Created", fmtTime(log.created_at)],
      ["Model", log.model],
      ["Latency", `upstream ${fmtMs(lat.upstream_ms)} · scoring ${fmtMs(lat.scoring_ms)} · total ${fmtMs(lat.total_ms)}`],
      ["Criteria", criteriaList(log.criteria_versions)],
      ["Metadata", metadataChips(log.metadata)],
      ...(log.budget ? [["Budget", budgetText(log.budget)]] : []),
    ]),
    h("h2", {}, "Prompt"),
    h("div.messages", {}, messages.map((m) => h("div.message", {},
      h("span.role", {}, m.role || "?"), h("pre.content", {}, contentText(m.content)),
      m.tool_calls ? h("pre.content.json", {}, fmtJson(m.tool_calls)) : null))),
    h("details", {}, h("summary", {}, "Request body"), h("pre.json", {}, fmtJson(log.request))),
    h("h2", {}, `Candidates (${log.candidates.length}), best first`),
    h("form.toolbar.feedback-bar", { on: { submit: (e) => e.preventDefault() } },
      field("Feedback dataset", datasetInput, "“This one is better” adds a pair (it vs each other candidate) here."),
      datalist, status),
    h("div.candidates", {}, cards),
  );
  // Suggest existing datasets; the feedback route creates a missing one, so a failure here is harmless.
  api("GET", "/v1/datasets").then((page) => {
    for (const ds of page.data || []) datalist.append(h("option", { value: ds.name }));
  }).catch(() => {});
}

function candidateCard(log, c, produced, onPick) {
  const chosen = c.rank === 0;
  const message = c.message || {};
  const slugs = [...new Set([...Object.keys(log.criteria_versions || {}), ...Object.keys(c.criteria_results || {})])];
  const unavailable = c.status !== "ok" || produced < 2;
  const button = h("button.feedback", {
    type: "button", disabled: unavailable, "data-unavailable": String(unavailable),
    title: unavailable ? "Feedback needs two produced candidates" : "Prefer this candidate over the others",
  }, "This one is better");
  const card = h(`article.candidate${chosen ? ".chosen" : ""}`, { "data-rank": c.rank ?? "", "data-index": c.index },
    h("header", {},
      h("span.rank", {}, c.rank === null || c.rank === undefined ? "unranked" : `#${c.rank + 1}`),
      chosen ? badge("chosen", "ok") : null,
      c.status !== "ok" ? badge("failed", "bad") : null,
      c.finish_reason === "rejected" ? badge("rejected early", "muted") : null,
      h("span.muted", {}, `candidate ${c.index}`),
      h("span.score", { title: "combined score (0..1)" }, fmtNum(c.score))),
    c.status !== "ok"
      ? h("div.error", {}, c.error || "the provider did not produce this candidate")
      : h("pre.content", {}, contentText(message.content)),
    message.tool_calls ? h("pre.content.json", {}, fmtJson(message.tool_calls)) : null,
    h("div.muted.small", {}, `finish_reason: ${c.finish_reason || "—"}`),
    slugs.length ? table(
      [
        { label: "Criterion", cell: (slug) => h("code", {}, `${slug}@${(c.criteria_results[slug] || {}).version || log.criteria_versions[slug] || "?"}`) },
        { label: "Score", num: true, cell: (slug) => resultScore(c.criteria_results[slug]) },
      ],
      slugs,
    ) : null,
    slugs.map((slug) => resultNote(slug, c.criteria_results[slug])),
    h("footer", {}, button),
  );
  button.addEventListener("click", () => onPick(button, card));
  return card;
}

// op-bon: what the strategy generated against plain best-of-N's estimate (usage.rewardgate, kept as log.budget)
function budgetText(b) {
  const ran = b.strategy === b.requested_strategy ? b.strategy : `${b.strategy} (asked: ${b.requested_strategy})`;
  const parts = [
    `${ran}: ${b.generated_tokens} tokens generated vs ~${b.plain_tokens} for plain best-of-N`,
    `${b.tokens_saved} saved`,
    `${b.rejected} of ${b.candidates} candidates rejected early`,
  ];
  if (b.checkpoints && b.checkpoints.length) parts.push(`checkpoints ${b.checkpoints.join(", ")}`);
  if (b.rounds > 1) parts.push(`${b.rounds} rounds`);
  return h("span.budget", {}, parts.join(" · "), b.fallback ? h("div.muted.small", {}, `fallback: ${b.fallback}`) : null);
}

function resultScore(result) {
  if (!result) return h("span.muted", {}, "—");
  if (result.status === "success") return fmtNum(result.score, 4);
  return badge(result.errorCode || "error", "bad");
}

function resultNote(slug, result) {
  if (!result) return null;
  const text = result.status === "success" ? result.explanation : result.errorMessage;
  return text ? h("p.note", {}, h("code", {}, slug), ": ", text) : null;
}
