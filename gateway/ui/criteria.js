// Criteria: the LLM-judge and rule definitions (GET /v1/criteria lists every version of every slug), one slug's
// versions with their specs and alignment reports, and forms to create a criterion (POST /v1/criteria) or add
// a version (POST /v1/criteria/{slug}/versions). Definitions are immutable: a change is a new version.

import { api } from "./api.js";
import { badge, copyButton, errorBox, facts, field, fill, fmtJson, fmtNum, fmtPct, fmtTime, h, link, mono, route, table } from "./dom.js";

const KINDS = { llm_judge: "LLM judge", rule: "Rule" };
const RULE_EXAMPLE = { type: "regex", pattern: "sorry|apologi[sz]e", flags: "i", must: "not_match" };

function bySlug(definitions) {
  const groups = new Map();
  for (const d of definitions) {
    if (!groups.has(d.slug)) groups.set(d.slug, []);
    groups.get(d.slug).push(d);
  }
  for (const versions of groups.values()) versions.sort((a, b) => versionNumber(b) - versionNumber(a));
  return groups;
}

function versionNumber(d) {
  return Number(String(d.version).replace(/^v/, "")) || 0;
}

export async function list(ctx) {
  const formHolder = h("div");
  const newButton = h("button.primary#new-criterion", { type: "button" }, "New criterion");
  newButton.addEventListener("click", () => {
    fill(formHolder, criterionForm({
      title: "New criterion",
      onCancel: () => fill(formHolder),
      submit: async (body) => {
        const created = await api("POST", "/v1/criteria", { json: body });
        location.hash = route("criteria", created.slug);
      },
    }));
  });
  const holder = h("div", {}, h("p.muted", {}, "Loading…"));
  fill(ctx.main, h("div.title-row", {}, h("h1", {}, "Criteria"), newButton), formHolder, holder);
  const { data } = await api("GET", "/v1/criteria");
  if (!ctx.alive()) return;
  const groups = [...bySlug(data).values()];
  fill(holder, table(
    [
      { label: "Slug", cell: ([d]) => link(route("criteria", d.slug), mono(d.slug)) },
      { label: "Kind", cell: ([d]) => badge(KINDS[d.kind] || d.kind, "muted") },
      { label: "Newest", cell: ([d]) => mono(d.version) },
      { label: "Versions", num: true, cell: (versions) => String(versions.length) },
      { label: "Description", cell: ([d]) => d.description || h("span.muted", {}, "—") },
      { label: "Alignment F1", num: true, cell: ([d]) => fmtNum(d.alignment && d.alignment.f1) },
      { label: "Created", cell: ([d]) => h("span.nowrap", {}, fmtTime(d.created_at)) },
    ],
    groups,
    { empty: "No criteria yet. Reward models are criteria too: see Reward models.", onRow: ([d]) => { location.hash = route("criteria", d.slug); } },
  ));
}

export async function detail(ctx) {
  const [slug] = ctx.params;
  fill(ctx.main, h("p.crumbs", {}, link("#/criteria", "Criteria"), " / ", mono(slug)), h("p.muted", {}, "Loading…"));
  const { data } = await api("GET", "/v1/criteria");
  if (!ctx.alive()) return;
  const versions = bySlug(data).get(slug);
  if (!versions) {
    // Ask for it by name so the page shows the API's own 404.
    await api("GET", `/v1/criteria/${encodeURIComponent(slug)}`);
    return;
  }
  const newest = versions[0];
  const formHolder = h("div");
  const newVersion = h("button.primary#new-version", { type: "button" }, "New version");
  newVersion.addEventListener("click", () => {
    fill(formHolder, criterionForm({
      title: `New version of ${slug}`,
      initial: newest,
      onCancel: () => fill(formHolder),
      submit: async (body) => {
        await api("POST", `/v1/criteria/${encodeURIComponent(slug)}/versions`, { json: { spec: body.spec, description: body.description } });
        ctx.rerender();
      },
    }));
  });
  fill(
    ctx.main,
    h("p.crumbs", {}, link("#/criteria", "Criteria"), " / ", mono(slug)),
    h("div.title-row", {}, h("h1", {}, slug, " ", badge(KINDS[newest.kind] || newest.kind, "muted")), newVersion),
    h("p.muted", {}, `Use it as "${slug}" (newest version) or pin "${newest.id}" in the op-criteria header.`),
    formHolder,
    versions.map((d) => h("article.card.version", { "data-id": d.id },
      h("header", {}, h("h2", {}, mono(d.id)), copyButton(d.id), h("span.muted", {}, fmtTime(d.created_at))),
      d.description ? h("p", {}, d.description) : null,
      h("pre.json", {}, fmtJson(d.spec)),
      d.alignment ? alignmentFacts(d.alignment) : h("p.muted.small", {}, "No alignment report: POST labelled rows to /v1/criteria/" + d.id + "/alignment."),
    )),
  );
}

function alignmentFacts(a) {
  const c = a.confusion || {};
  return facts([
    ["Alignment", `${a.rows} rows, ${a.scored} scored, ${a.errored} errored, threshold ${a.threshold}`],
    ["Precision / recall", `${fmtPct(a.precision)} / ${fmtPct(a.recall)}`],
    ["F1 · accuracy", `${fmtNum(a.f1)} · ${fmtPct(a.accuracy)}`],
    ["Confusion", `tp ${c.tp} · fp ${c.fp} · tn ${c.tn} · fn ${c.fn}`],
  ]);
}

/** The create / new-version form. With `initial`, the slug and kind are fixed and the fields start from its spec. */
function criterionForm({ title, initial, submit, onCancel }) {
  const spec = initial ? initial.spec : {};
  const slug = h("input#criterion-slug", { value: initial ? initial.slug : "", placeholder: "no-apologies", required: true, disabled: !!initial });
  const kind = h("select#criterion-kind", { disabled: !!initial },
    Object.entries(KINDS).map(([value, label]) => h("option", { value, selected: initial ? initial.kind === value : value === "llm_judge" }, label)));
  const description = h("input#criterion-description", { value: initial ? initial.description : "", placeholder: "what it checks" });
  const model = h("input#judge-model", { value: spec.model || "", placeholder: "openai:gpt-4o-mini" });
  const instructions = h("textarea#judge-instructions", { rows: 5, placeholder: "The answer must …" }, spec.instructions || "");
  const temperature = h("input#judge-temperature", { type: "number", step: "0.1", min: "0", max: "2", value: spec.temperature ?? "" , placeholder: "0" });
  const maxTokens = h("input#judge-max-tokens", { type: "number", min: "16", max: "4096", value: spec.max_tokens ?? "", placeholder: "512" });
  const ruleSpec = h("textarea#rule-spec.mono", { rows: 6 }, fmtJson(initial && initial.kind === "rule" ? spec : RULE_EXAMPLE));
  const judgeFields = h("div.judge-fields", {}, field("Judge model", model, "provider:model, as in a chat request"),
    field("Instructions", instructions, "What a passing answer does. The judge answers PASS or FAIL with a confidence."),
    h("div.row", {}, field("Temperature", temperature), field("Max tokens", maxTokens)));
  const ruleFields = h("div.rule-fields", {}, field("Spec (JSON)", ruleSpec,
    'One rule or {"all": [...]}: regex {pattern, flags, must}, json {allow_fence}, json_schema {schema}, length {min_chars, max_chars, min_words, max_words}.'));
  const errors = h("div.form-errors");
  const showKind = () => {
    judgeFields.hidden = kind.value !== "llm_judge";
    ruleFields.hidden = kind.value !== "rule";
  };
  kind.addEventListener("change", showKind);
  showKind();
  const onSubmit = async (event) => {
    event.preventDefault();
    fill(errors);
    let body;
    try {
      body = { slug: slug.value.trim(), kind: kind.value, description: description.value.trim(), spec: readSpec() };
    } catch (err) {
      fill(errors, errorBox(err));
      return;
    }
    const button = event.submitter || form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await submit(body);
    } catch (err) {
      fill(errors, errorBox(err));
    } finally {
      button.disabled = false;
    }
  };
  const readSpec = () => {
    if (kind.value === "rule") {
      try {
        return JSON.parse(ruleSpec.value);
      } catch (err) {
        throw Object.assign(new Error(`not valid JSON: ${err.message}`), { param: "spec" });
      }
    }
    const out = { ...(initial && initial.kind === "llm_judge" ? spec : {}), model: model.value.trim(), instructions: instructions.value };
    if (temperature.value !== "") out.temperature = Number(temperature.value); else delete out.temperature;
    if (maxTokens.value !== "") out.max_tokens = Number(maxTokens.value); else delete out.max_tokens;
    return out;
  };
  const form = h("form.card.criterion-form", { on: { submit: onSubmit } },
    h("h2", {}, title),
    h("div.row", {}, field("Slug", slug), field("Kind", kind)),
    field("Description", description),
    judgeFields, ruleFields, errors,
    h("div.actions", {}, h("button.primary", { type: "submit" }, initial ? "Create version" : "Create criterion"),
      h("button", { type: "button", on: { click: onCancel } }, "Cancel")));
  return form;
}
