// The console's shell: navigation, the hash router (#/logs, #/logs/<id>, #/datasets, ...) and the gateway key.
// Pages are modules with render functions `(ctx) -> Promise`; ctx.main is theirs to fill. A 401 from any call
// shows the key prompt above the page; saving a key renders the page again.

import { ApiError, getKey, onUnauthorized, setKey } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import * as criteria from "./criteria.js";
import * as datasets from "./datasets.js";
import * as logs from "./logs.js";
import * as models from "./models.js";

const ROUTES = [
  [/^logs$/, "logs", logs.list],
  [/^logs\/([^/]+)$/, "logs", logs.detail],
  [/^datasets$/, "datasets", datasets.list],
  [/^datasets\/([^/]+)$/, "datasets", datasets.detail],
  [/^models$/, "models", models.list],
  [/^models\/([^/]+)$/, "models", models.detail],
  [/^criteria$/, "criteria", criteria.list],
  [/^criteria\/([^/]+)$/, "criteria", criteria.detail],
];
const NAV = [
  ["logs", "Logs"],
  ["datasets", "Datasets"],
  ["models", "Reward models"],
  ["criteria", "Criteria"],
];

const keyPanel = h("section.key-panel#key-panel", { hidden: true });
const main = h("main#page");
const keyButton = h("button.small.key-button#key-button", { type: "button", on: { click: () => showKeyPanel(null) } });
let current = { id: 0, cleanups: [] };

function shell() {
  const nav = h("nav", {}, NAV.map(([page, label]) => h("a", { href: `#/${page}`, "data-page": page }, label)));
  const header = h("header", {}, h("a.brand", { href: "#/logs" }, "rewardgate"), nav, keyButton);
  document.body.replaceChildren(header, keyPanel, main);
  updateKeyButton();
}

function updateKeyButton() {
  keyButton.textContent = getKey() ? "API key: set" : "API key";
}

function showKeyPanel(err) {
  const input = h("input#api-key", { type: "password", autocomplete: "off", placeholder: "gateway key", value: getKey() });
  const save = (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    keyPanel.hidden = true;
    updateKeyButton();
    render();
  };
  const forget = () => {
    setKey("");
    input.value = "";
    updateKeyButton();
  };
  fill(
    keyPanel,
    h("form.key-form", { on: { submit: save } },
      h("strong", {}, err ? "This gateway needs an API key." : "Gateway API key"),
      err ? h("span.error-text", {}, err.message) : h("span.muted", {}, "Kept in this browser's local storage."),
      input,
      h("button.primary", { type: "submit" }, "Save"),
      h("button", { type: "button", on: { click: forget } }, "Forget"),
      h("button", { type: "button", on: { click: () => { keyPanel.hidden = true; } } }, "Close")),
  );
  keyPanel.hidden = false;
  input.focus();
}

async function render() {
  for (const cleanup of current.cleanups) cleanup();
  const id = current.id + 1;
  current = { id, cleanups: [] };
  const [path, search] = (location.hash.replace(/^#\/?/, "") || "logs").split("?");
  const match = ROUTES.map(([re, page, fn]) => [path.match(re), page, fn]).find(([m]) => m);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", !!match && a.dataset.page === match[1]);
  main.replaceChildren();
  if (!match) {
    main.append(h("h1", {}, "Not found"), h("p", {}, "No page here. ", h("a", { href: "#/logs" }, "Go to the logs.")));
    return;
  }
  const [m, page, fn] = match;
  const ctx = {
    main,
    params: m.slice(1).map(decodeURIComponent),
    query: new URLSearchParams(search || ""),
    alive: () => current.id === id,
    onLeave: (cleanup) => current.cleanups.push(cleanup),
    rerender: () => { if (current.id === id) render(); },
  };
  document.title = `${NAV.find(([p]) => p === page)[1]} · rewardgate`;
  try {
    await fn(ctx);
  } catch (err) {
    if (!ctx.alive()) return;
    if (!(err instanceof ApiError)) console.error(err);
    main.append(errorBox(err));
  }
}

onUnauthorized((err) => showKeyPanel(err));
shell();
window.addEventListener("hashchange", render);
render();
