// A workspace's sandboxes: each one's status as a badge that changes live, and what the
// person's role allows: create, open (a new tab, through the ticket flow), pause,
// resume, retry a failed one, delete.
import { all, api, explain } from "./api.js";
import { announce, confirmDialog, field, h, replace } from "./dom.js";
import { may } from "./roles.js";

const OPENABLE = new Set(["running", "paused", "resuming", "creating"]);

export async function sandboxes(ctx) {
  const { wid, panel } = ctx;
  const rows = new Map();
  const nodes = new Map();
  const list = h("ul", { class: "rows", "aria-label": "Sandboxes" });
  const error = h("p", { class: "error", role: "alert" });
  const empty = h("p", { class: "muted" }, "No sandbox yet.");
  const operate = may.operate(ctx.role);

  const act = async (label, method, path, box) => {
    error.textContent = "";
    try {
      const row = await api(method, path);
      if (row) upsert(row);
      announce(`${label}: ${box.name}.`);
    } catch (e) {
      error.textContent = explain(e);
    }
  };

  const row = (box) => {
    const actions = [];
    if (OPENABLE.has(box.status) || (box.kind === "local" && box.status === "running")) {
      actions.push(h("a", {
        class: "button small", href: `/api/sandboxes/${box.id}/open`, target: "_blank",
        rel: "noopener", "aria-label": `Open ${box.name} in a new tab`,
      }, "Open"));
    }
    if (operate && box.kind === "cloud") {
      if (box.status === "running") {
        actions.push(h("button", { type: "button", class: "small secondary",
          onclick: () => act("Pausing", "POST", `/api/sandboxes/${box.id}/pause`, box) }, "Pause"));
      }
      if (box.status === "paused") {
        actions.push(h("button", { type: "button", class: "small secondary",
          onclick: () => act("Resuming", "POST", `/api/sandboxes/${box.id}/resume`, box) }, "Resume"));
      }
      if (box.status === "failed") {
        actions.push(h("button", { type: "button", class: "small",
          onclick: () => act("Retrying", "POST", `/api/sandboxes/${box.id}/resume`, box) }, "Retry"));
      }
    }
    if (operate && box.status !== "deleting") {
      actions.push(h("button", {
        type: "button", class: "small danger", "aria-label": `Delete ${box.name}`,
        onclick: async () => {
          const ok = await confirmDialog(`Delete ${box.name}?`,
            `The sandbox ${box.name} (${box.type}, ${box.kind}) and everything in it will be deleted.`,
            "Delete");
          if (ok) await act("Deleting", "DELETE", `/api/sandboxes/${box.id}`, box);
        },
      }, "Delete"));
    }
    return h("li", { class: "row-item", "data-id": box.id, "data-status": box.status },
      h("div", { class: "what" },
        h("strong", {}, box.name),
        h("span", { class: "muted" }, ` ${box.type} · ${box.kind}`)),
      h("span", { class: `badge status-${box.status}`, "data-testid": "status" }, box.status),
      box.error ? h("p", { class: "reason" }, box.status === "failed" ? "Failed: " : "", box.error) : null,
      h("div", { class: "actions" }, actions));
  };

  const draw = () => {
    const sorted = [...rows.values()].sort((a, b) =>
      (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id < b.id ? -1 : 1));
    nodes.clear();
    replace(list, sorted.map((box) => {
      const node = row(box);
      nodes.set(box.id, node);
      return node;
    }));
    empty.hidden = rows.size > 0;
  };

  function upsert(box) {
    const known = rows.get(box.id);
    if (known && known.updated_at > box.updated_at) return; // (an older answer)
    rows.set(box.id, box);
    const old = nodes.get(box.id);
    if (old) {
      const node = row(box);
      old.replaceWith(node);
      nodes.set(box.id, node);
    } else {
      draw();
    }
  }

  const load = async () => {
    const got = await all(`/api/workspaces/${wid}/sandboxes`);
    rows.clear();
    for (const box of got) rows.set(box.id, box);
    draw();
  };

  ctx.on("sandbox", (entry) => {
    if (entry.item) {
      const before = rows.get(entry.id);
      upsert(entry.item);
      if (before && before.status !== entry.item.status) {
        announce(`${entry.item.name} is ${entry.item.status}.`);
      }
    } else if (rows.delete(entry.id)) {
      const node = nodes.get(entry.id);
      if (node) node.remove();
      nodes.delete(entry.id);
      empty.hidden = rows.size > 0;
    }
  });
  ctx.on("ready", () => load().catch((e) => { error.textContent = explain(e); }));

  let form = null;
  if (operate) {
    const name = h("input", { name: "name", required: true, maxlength: 64 });
    const type = h("select", { name: "type" },
      h("option", { value: "opencode" }, "opencode"), h("option", { value: "openclaw" }, "openclaw"));
    form = h("form", {
      class: "row", "aria-label": "Create a sandbox",
      onsubmit: async (event) => {
        event.preventDefault();
        error.textContent = "";
        try {
          const box = await api("POST", `/api/workspaces/${wid}/sandboxes`, { name: name.value, type: type.value });
          upsert(box);
          name.value = "";
          announce(`Created ${box.name}.`);
        } catch (e) {
          error.textContent = explain(e);
        }
      },
    }, field("Name", name), field("Type", type), h("button", { type: "submit" }, "Create sandbox"));
  }
  replace(panel, h("h2", { id: "panel-title" }, "Sandboxes"), form, error, empty, list);
  await load();
}
