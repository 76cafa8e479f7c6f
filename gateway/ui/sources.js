// Reward models from other sources than a dataset of pairs: the "Import a reward model" dialog (a published
// *ForSequenceClassification: POST /v1/reward-models/import) and the "Distil a judge" dialog (an LLM judge's
// stored scores: POST /v1/reward-models/distill). Both start a job and open its page.

import { api } from "./api.js";
import { errorBox, field, fill, h, route } from "./dom.js";

const SLUG = "[a-z0-9][a-z0-9._\\-]*";

/** A modal form: `body(errors)` builds its fields; `submit()` returns the created job (or throws ApiError). */
function modal(id, title, intro, fields, submitLabel, submit) {
  const errors = h("div.form-errors");
  const start = h(`button.primary#${id}-start`, { type: "submit" }, submitLabel);
  const dialog = h(`dialog#${id}-dialog`);
  const close = () => { dialog.close(); dialog.remove(); };
  const onSubmit = async (event) => {
    event.preventDefault();
    fill(errors);
    start.disabled = true;
    try {
      const job = await submit();
      close();
      location.hash = route("models", job.id);
    } catch (err) {
      fill(errors, errorBox(err));
    } finally {
      start.disabled = false;
    }
  };
  fill(dialog, h("form.dialog-form", { on: { submit: onSubmit } },
    h("h2", {}, title), h("p.muted", {}, intro), fields, errors,
    h("div.actions", {}, start, h("button", { type: "button", on: { click: close } }, "Cancel"))));
  document.body.append(dialog);
  dialog.addEventListener("cancel", () => dialog.remove());
  dialog.showModal();
  return errors;
}

/** Options of a select from the datasets: none first (an optional choice). */
async function datasetOptions(select, errors, none) {
  select.append(h("option", { value: "" }, none));
  try {
    const { data } = await api("GET", "/v1/datasets");
    for (const ds of data) select.append(h("option", { value: ds.id }, `${ds.name} (${ds.entries} entries)`));
  } catch (err) {
    errors.append(errorBox(err));
  }
}

export async function openImportDialog() {
  const source = h("input#import-source", { required: true, placeholder: "a model directory on the gateway's machine, or owner/name" });
  const slug = h("input#import-slug", { required: true, pattern: SLUG });
  const calibration = h("select#import-calibration");
  const errors = modal("import", "Import a reward model",
    "A published reward model: a Hugging Face *ForSequenceClassification with one label (e.g. Skywork-Reward). " +
    "It is checked, rendered through its own chat template, calibrated, and served as the slug's next version.",
    [
      field("Source", source, "Multi-label or non-classification checkpoints are refused, naming what was found."),
      field("Slug", slug, "Requests name it in op-criteria."),
      field("Calibration dataset", calibration, "Its responses give the reward mean/std the gateway normalises with (and accuracy on pairs)."),
    ],
    "Import",
    () => {
      const body = { source: source.value.trim(), slug: slug.value.trim() };
      if (calibration.value) body.calibration_dataset = calibration.value;
      return api("POST", "/v1/reward-models/import", { json: body });
    });
  await datasetOptions(calibration, errors, "none (mean 0, std 1)");
}

export async function openDistillDialog() {
  const criterion = h("select#distill-criterion", { required: true });
  const slug = h("input#distill-slug", { required: true, pattern: SLUG });
  const metadata = h("input#distill-metadata", { placeholder: "app=support, team=a" });
  const epochs = h("input#distill-epochs", { type: "number", min: "1", max: "100", value: "2" });
  const base = h("input#distill-base-model", { placeholder: "the trainer's default (minilm)" });
  const errors = modal("distill", "Distil a judge",
    "A judge costs a provider call per candidate; a reward model microseconds. The candidates the judge scored in " +
    "stored logs train a reward model on its scores; a held-back slice of prompts measures how well it agrees.",
    [
      field("Judge", criterion),
      field("Slug", slug, "The reward model to train; the rows become the dataset <slug>-distill."),
      field("Logs with metadata", metadata, "Optional filter, key=value pairs separated by commas."),
      h("div.row", {}, field("Epochs", epochs), field("Base model", base)),
    ],
    "Distil",
    () => {
      const body = { criterion: criterion.value, slug: slug.value.trim(), hyperparameters: { epochs: Number(epochs.value) } };
      if (base.value.trim()) body.base_model = base.value.trim();
      const pairs = metadata.value.split(",").map((p) => p.trim()).filter(Boolean);
      if (pairs.length) body.metadata = Object.fromEntries(pairs.map((p) => [p.split("=")[0].trim(), p.split("=").slice(1).join("=").trim()]));
      return api("POST", "/v1/reward-models/distill", { json: body });
    });
  try {
    const { data } = await api("GET", "/v1/criteria");
    const newest = new Map();
    for (const c of data) if (c.kind !== "reward_model") newest.set(c.slug, c);
    for (const [slug_, c] of newest) criterion.append(h("option", { value: slug_ }, `${slug_} (${c.kind})`));
    if (!newest.size) errors.append(h("p.muted", {}, "No judge is defined yet: create one under Criteria."));
  } catch (err) {
    errors.append(errorBox(err));
  }
}
