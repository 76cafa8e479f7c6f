// Datasets: named lists of preference pairs (docs/LIFECYCLE.md). The list with split counts, create, and one
// dataset's page: JSONL upload with the per-line error report, the entries, export, and the "Reward Model"
// dialog that starts a training job (POST /v1/reward-models) from the base models the gateway offers.

import { api } from "./api.js";
import {
  badge, contentText, copyButton, errorBox, facts, field, fill, fmtNum, fmtTime, h, link, mono, route, table,
} from "./dom.js";

const CUSTOM = "__custom__";

export async function list(ctx) {
  const name = h("input#dataset-name", { placeholder: "support-prefs", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" });
  const description = h("input#dataset-description", { placeholder: "optional" });
  const errors = h("div.form-errors");
  const create = async (event) => {
    event.preventDefault();
    fill(errors);
    try {
      const ds = await api("POST", "/v1/datasets", { json: { name: name.value.trim(), description: description.value.trim() } });
      location.hash = route("datasets", ds.id);
    } catch (err) {
      fill(errors, errorBox(err));
    }
  };
  const holder = h("div", {}, h("p.muted", {}, "Loading…"));
  fill(ctx.main, h("h1", {}, "Datasets"),
    h("form.toolbar#dataset-create", { on: { submit: create } }, field("Name", name), field("Description", description),
      h("button.primary", { type: "submit" }, "Create dataset")),
    errors, holder);
  const { data } = await api("GET", "/v1/datasets");
  if (!ctx.alive()) return;
  fill(holder, table(
    [
      { label: "Name", cell: (ds) => link(route("datasets", ds.id), ds.name) },
      { label: "Id", cell: (ds) => mono(ds.id) },
      { label: "Entries", num: true, cell: (ds) => fmtNum(ds.entries) },
      { label: "TRAIN", num: true, cell: (ds) => fmtNum(ds.counts && ds.counts.TRAIN) },
      { label: "TEST", num: true, cell: (ds) => fmtNum(ds.counts && ds.counts.TEST) },
      { label: "Description", cell: (ds) => ds.description || h("span.muted", {}, "—") },
      { label: "Created", cell: (ds) => h("span.nowrap", {}, fmtTime(ds.created_at)) },
    ],
    data,
    { empty: "No datasets yet: create one, then upload JSONL pairs or send feedback from a log.", onRow: (ds) => { location.hash = route("datasets", ds.id); } },
  ));
}

export async function detail(ctx) {
  const [ref] = ctx.params;
  fill(ctx.main, h("p.crumbs", {}, link("#/datasets", "Datasets"), " / ", ref), h("p.muted", {}, "Loading…"));
  let ds = await api("GET", `/v1/datasets/${encodeURIComponent(ref)}`);
  if (!ctx.alive()) return;
  const path = `/v1/datasets/${encodeURIComponent(ds.id)}`;
  const summary = h("div");
  const showSummary = () => fill(summary, facts([
    ["Id", h("span", {}, mono(ds.id), " ", copyButton(ds.id))],
    ["Description", ds.description || "—"],
    ["Created", fmtTime(ds.created_at)],
    ["Entries", h("span#count-entries.num", {}, fmtNum(ds.entries))],
    ["Split", h("span", {}, badge("TRAIN"), " ", h("span#count-train", {}, fmtNum(ds.counts.TRAIN)), "  ",
      badge("TEST"), " ", h("span#count-test", {}, fmtNum(ds.counts.TEST)))],
  ]));
  const refresh = async () => {
    ds = await api("GET", path);
    if (ctx.alive()) showSummary();
  };
  showSummary();

  const entries = entriesSection(path, refresh);
  const trainButton = h("button.primary#train-button", { type: "button", on: { click: () => openTrainDialog(ds) } }, "Reward Model");
  const exportButton = h("button#export-button", { type: "button", on: { click: () => download(`${path}/export`, `${ds.name}.jsonl`, summary) } }, "Export JSONL");
  const deleteButton = h("button.danger", { type: "button" }, "Delete");
  deleteButton.addEventListener("click", async () => {
    if (!confirm(`Delete dataset ${ds.name} and its ${ds.entries} entries?`)) return;
    try {
      await api("DELETE", path);
      location.hash = "#/datasets";
    } catch (err) {
      summary.append(errorBox(err));
    }
  });
  fill(
    ctx.main,
    h("p.crumbs", {}, link("#/datasets", "Datasets"), " / ", ds.name),
    h("div.title-row", {}, h("h1", {}, ds.name), h("div.actions", {}, trainButton, exportButton, deleteButton)),
    summary,
    uploadSection(path, async () => { await refresh(); await entries.reload(); }),
    entries.el,
  );
  await entries.reload();
}

function uploadSection(path, afterUpload) {
  const file = h("input#upload-file", { type: "file", accept: ".jsonl,.ndjson,.json,application/x-ndjson", required: true });
  const skip = h("input#upload-skip-invalid", { type: "checkbox" });
  const report = h("div#upload-report", { "aria-live": "polite" });
  const button = h("button.primary#upload-button", { type: "submit" }, "Upload");
  const upload = async (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    button.disabled = true;
    fill(report, h("span.muted", {}, "Uploading…"));
    try {
      const answer = await api("POST", `${path}/entries`, {
        body: file.files[0], contentType: "application/x-ndjson", query: { skip_invalid: skip.checked ? "true" : "" },
      });
      const skipped = answer.invalid || [];
      fill(report, h("p.ok-text", {}, `Added ${answer.added} pair${answer.added === 1 ? "" : "s"}` +
        (skipped.length ? `; skipped ${skipped.length} invalid line${skipped.length === 1 ? "" : "s"}:` : ".")),
        skipped.length ? invalidTable(skipped) : null);
      file.value = "";
      await afterUpload();
    } catch (err) {
      const invalid = (err.body && (err.body.invalid || (err.body.error && err.body.error.invalid))) || [];
      fill(report, errorBox(err), invalid.length ? [
        h("p", {}, `Nothing was added. ${invalid.length} invalid line${invalid.length === 1 ? "" : "s"}; fix them, or tick "skip invalid lines" to load the rest.`),
        invalidTable(invalid)] : null);
    } finally {
      button.disabled = false;
    }
  };
  return h("section", {}, h("h2", {}, "Upload preference pairs"),
    h("form.toolbar#upload-form", { on: { submit: upload } }, field("JSONL file", file),
      h("label.check", {}, skip, " skip invalid lines"), button),
    h("p.muted.small", {}, 'One pair per line: {"messages": [..., {"role": "assistant", "content": CHOSEN}], "rejected_message": {"role": "assistant", "content": REJECTED}, "split"?: "TRAIN" | "TEST"}. Without split: a 90/10 split by prompt hash.'),
    report);
}

function invalidTable(invalid) {
  return h("div.invalid-report", {}, table(
    [
      { label: "Line", num: true, cell: (e) => String(e.line ?? (e.index !== undefined ? e.index + 1 : "?")) },
      { label: "Error", cell: (e) => e.error },
    ],
    invalid,
  ));
}

function entriesSection(path, afterDelete) {
  const split = h("select#entries-split", {}, ["", "TRAIN", "TEST"].map((s) => h("option", { value: s }, s || "all splits")));
  const holder = h("div");
  const more = h("button#entries-more", { type: "button", hidden: true }, "More entries");
  let rows = [];
  const columns = [
    { label: "Entry", cell: (e) => mono(e.id) },
    { label: "Split", cell: (e) => badge(e.split) },
    { label: "Source", cell: (e) => h("span", {}, badge(e.source, "muted"), " ", e.source_ref ? link(route("logs", e.source_ref), mono(e.source_ref)) : null) },
    { label: "Prompt", cell: (e) => clip(lastUser(e.pair)) },
    { label: "Chosen", cell: (e) => clip(chosen(e.pair)) },
    { label: "Rejected", cell: (e) => clip(e.pair && e.pair.rejected_message && contentText(e.pair.rejected_message.content)) },
    { label: "", cell: (e) => h("button.small.danger", { type: "button", title: "Delete this entry", on: { click: () => remove(e) } }, "Delete") },
  ];
  const show = () => fill(holder, table(columns, rows, { empty: "No entries yet." }), more);
  const load = async (cursor) => {
    try {
      const page = await api("GET", `${path}/entries`, { query: { limit: 50, cursor, split: split.value } });
      rows = cursor ? [...rows, ...page.data] : page.data;
      show();
      more.hidden = !page.has_more;
      more.onclick = () => load(page.next_cursor);
    } catch (err) {
      fill(holder, errorBox(err));
    }
  };
  const remove = async (entry) => {
    try {
      await api("DELETE", `${path}/entries/${encodeURIComponent(entry.id)}`);
      rows = rows.filter((e) => e.id !== entry.id);
      show();
      await afterDelete();
    } catch (err) {
      holder.prepend(errorBox(err));
    }
  };
  split.addEventListener("change", () => load(null));
  const el = h("section#entries", {}, h("div.title-row", {}, h("h2", {}, "Entries"), split), holder);
  return { el, reload: () => load(null) };
}

function lastUser(pair) {
  const turns = (pair && pair.messages) || [];
  for (let i = turns.length - 2; i >= 0; i--) if (turns[i].role === "user") return contentText(turns[i].content);
  return "";
}

function chosen(pair) {
  const turns = (pair && pair.messages) || [];
  return turns.length ? contentText(turns[turns.length - 1].content) : "";
}

function clip(text, n = 140) {
  const s = String(text || "");
  return h("span.clip", { title: s }, s.length > n ? s.slice(0, n) + "…" : s);
}

async function download(path, filename, errorsAt) {
  try {
    const response = await api("GET", path, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    errorsAt.append(errorBox(err));
  }
}

function slugFrom(name) {
  // The trainer's slug rule: lower case, [a-z0-9][a-z0-9._-]*.
  const slug = name.toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 120);
  return `${slug || "reward"}-rm`;
}

/** The "Reward Model" dialog: base model, slug, hyperparameters, Start Training. */
async function openTrainDialog(ds) {
  const base = h("select#rm-base-model");
  const custom = h("input#rm-base-model-custom", { placeholder: "Hugging Face id or a path on the gateway's machine", hidden: true });
  const slug = h("input#rm-slug", { value: slugFrom(ds.name), required: true, pattern: "[a-z0-9][a-z0-9._\\-]*" });
  const batch = h("input#rm-batch-size", { value: "auto", size: 6 });
  const lr = h("input#rm-learning-rate", { value: "5e-5", size: 8 });
  const epochs = h("input#rm-epochs", { type: "number", min: "1", max: "100", value: "2" });
  const maxLength = h("input#rm-max-length", { type: "number", min: "16", placeholder: "default", size: 6 });
  const errors = h("div.form-errors");
  const start = h("button.primary#rm-start", { type: "submit" }, "Start Training");
  const dialog = h("dialog#train-dialog");
  const close = () => { dialog.close(); dialog.remove(); };
  base.addEventListener("change", () => { custom.hidden = base.value !== CUSTOM; });
  const submit = async (event) => {
    event.preventDefault();
    fill(errors);
    const hyperparameters = { batch_size: batch.value.trim() === "auto" ? "auto" : Number(batch.value), learning_rate: Number(lr.value), epochs: Number(epochs.value) };
    const problems = [];
    if (hyperparameters.batch_size !== "auto" && !(Number.isInteger(hyperparameters.batch_size) && hyperparameters.batch_size > 0)) problems.push("batch size: 'auto' or a positive integer");
    if (!(hyperparameters.learning_rate > 0)) problems.push("learning rate: a positive number, e.g. 5e-5");
    if (!(Number.isInteger(hyperparameters.epochs) && hyperparameters.epochs > 0)) problems.push("epochs: a positive integer");
    if (maxLength.value !== "") {
      hyperparameters.max_length = Number(maxLength.value);
      if (!(Number.isInteger(hyperparameters.max_length) && hyperparameters.max_length > 0)) problems.push("max length: a positive integer (tokens)");
    }
    if (problems.length) {
      fill(errors, problems.map((p) => errorBox(new Error(p))));
      return;
    }
    const body = { dataset: ds.id, slug: slug.value.trim(), hyperparameters };
    const baseModel = base.value === CUSTOM ? custom.value.trim() : base.value;
    if (baseModel) body.base_model = baseModel;
    start.disabled = true;
    try {
      const job = await api("POST", "/v1/reward-models", { json: body });
      close();
      location.hash = route("models", job.id);
    } catch (err) {
      fill(errors, errorBox(err));
    } finally {
      start.disabled = false;
    }
  };
  fill(dialog, h("form.dialog-form", { on: { submit } },
    h("h2", {}, "Reward Model"),
    h("p.muted", {}, `Train a reward model on ${ds.name}: ${ds.counts.TRAIN} TRAIN pairs, evaluated on ${ds.counts.TEST} TEST pairs.`),
    field("Base model", base), custom,
    field("Slug", slug, "Requests name it in op-criteria; each training run adds a version (slug@vN)."),
    h("div.row", {}, field("Batch size", batch), field("Learning rate", lr), field("Epochs", epochs), field("Max length", maxLength)),
    errors,
    h("div.actions", {}, start, h("button", { type: "button", on: { click: close } }, "Cancel"))));
  document.body.append(dialog);
  dialog.addEventListener("cancel", () => dialog.remove());
  dialog.showModal();
  try {
    const { data } = await api("GET", "/v1/base-models");
    for (const m of data) base.append(h("option", { value: m.id, selected: !!m.default }, m.description ? `${m.id} — ${m.description}` : m.id));
  } catch (err) {
    errors.append(errorBox(err));
  }
  base.append(h("option", { value: CUSTOM, selected: !base.options.length }, "Other: a model id or path…"));
  custom.hidden = base.value !== CUSTOM;
}
