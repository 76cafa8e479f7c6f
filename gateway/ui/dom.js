// DOM building and formatting for the console's pages. Data reaches the page only as text nodes and attribute
// values (never innerHTML), so a candidate that contains "<script>" shows as those characters.

const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden", "required", "multiple", "open"]);

/** h("tag#id.class1.class2", {attr: value, on: {click: fn}}, ...children): an element; strings become text. */
export function h(spec, props, ...children) {
  const [, tag, rest] = spec.match(/^([a-z0-9]*)(.*)$/);
  const el = document.createElement(tag || "div");
  for (const [, kind, name] of rest.matchAll(/([.#])([\w-]+)/g)) {
    if (kind === "#") el.id = name;
    else el.classList.add(name);
  }
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === "class") {
      el.className = [el.className, value].filter(Boolean).join(" ");
    } else if (PROPS.has(key)) {
      el[key] = value;
    } else if (key.toLowerCase().startsWith("on")) {
      throw new Error(`event handler attributes are not allowed: ${key}`);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's content with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** An in-page link to a console route, e.g. link("#/logs/" + id, id). Ids are URI-encoded by the caller. */
export function link(hash, ...children) {
  return h("a", { href: hash }, ...children);
}

export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

// ------------------------------------------------------------------ formatting

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || x === "") return "—";
  const n = Number(x);
  if (!Number.isFinite(n)) return String(x);
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return n.toFixed(digits);
}

export function fmtPct(x) {
  return x === null || x === undefined ? "—" : `${(100 * Number(x)).toFixed(1)} %`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

export function fmtJson(value) {
  return JSON.stringify(value, null, 2);
}

// ------------------------------------------------------------------ pieces

const STATE_KINDS = {
  PENDING: "muted", QUEUED: "muted", TRAINING: "info", DEPLOYED: "ok", ERROR: "bad",
  TRAIN: "muted", TEST: "info", success: "ok", error: "bad", ok: "ok",
};

export function badge(text, kind) {
  return h(`span.badge.badge-${kind || STATE_KINDS[text] || "muted"}`, {}, text);
}

export function mono(text) {
  return h("code.mono", {}, text);
}

/** A button that copies `value` to the clipboard and says so. */
export function copyButton(value, label = "Copy") {
  const button = h("button.small", { type: "button", title: `Copy ${value}` }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value);
    } catch {
      const scratch = h("textarea", { readonly: true }, value);
      document.body.append(scratch);
      scratch.select();
      document.execCommand("copy");
      scratch.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

/** The API's error, said inline: "400 invalid_request_error (param n): message". */
export function errorBox(err) {
  const status = err && err.status ? `${err.status}${err.type ? " " + err.type : ""}` : "error";
  const param = err && err.param ? ` (${err.param})` : "";
  return h("div.error", { role: "alert" }, h("strong", {}, status + param), ": ", (err && err.message) || String(err));
}

/** A table: columns are {label, num?, cell(row) -> Node | string}; numeric columns align right. */
export function table(columns, rows, { empty = "Nothing here yet.", onRow } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h(c.num ? "th.num" : "th", {}, c.label))));
  const body = h("tbody");
  for (const row of rows) {
    const tr = h("tr", {}, columns.map((c) => h(c.num ? "td.num" : "td", {}, c.cell(row))));
    if (onRow) {
      tr.classList.add("clickable");
      tr.addEventListener("click", (event) => {
        if (!event.target.closest("a, button, input, select")) onRow(row);
      });
    }
    body.append(tr);
  }
  if (!rows.length) body.append(h("tr", {}, h("td.empty", { colspan: columns.length }, empty)));
  return h("table", {}, head, body);
}

/** A definition list of [label, value] pairs. */
export function facts(pairs) {
  return h("dl.facts", {}, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function progressBar(step, total) {
  const share = total ? Math.max(0, Math.min(1, step / total)) : 0;
  const bar = h("span.bar");
  bar.style.width = `${(100 * share).toFixed(1)}%`;
  return h("span.progress", { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total || 0, "aria-valuenow": step || 0 },
    h("span.track", {}, bar), h("span.progress-label", {}, total ? `${step} / ${total}` : "—"));
}

/** Message content as text: a string, or the text parts of a content array (other parts as JSON). */
export function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (p && p.type === "text" ? p.text : fmtJson(p))).join("\n");
  return fmtJson(content);
}

/** A form field: a label over an input. */
export function field(label, input, hint) {
  return h("label.field", {}, h("span.label", {}, label), input, hint ? h("span.hint", {}, hint) : null);
}
