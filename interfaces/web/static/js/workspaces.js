// The person's workspaces: each with their role and its member and sandbox counts (all
// in the list's rows: one request however many workspaces); create one; delete one
// (owner), after a confirmation naming what goes with it.
import { all, api, explain } from "./api.js";
import { announce, confirmDialog, field, h, replace } from "./dom.js";
import { may } from "./roles.js";

export async function workspaces(session, go) {
  const main = document.getElementById("main");
  const rows = await all("/api/workspaces");
  const list = h("ul", { class: "cards", "aria-label": "Workspaces" });
  const error = h("p", { class: "error", role: "alert" });

  const card = (w) => {
    const item = h("li", { class: "card" },
      h("h2", {}, h("a", { href: `#/w/${w.id}/sandboxes` }, w.name)),
      h("p", {}, h("span", { class: `badge role-${w.role}` }, w.role), " ",
        h("span", { class: "muted" },
          `${w.member_count} ${w.member_count === 1 ? "member" : "members"}, `
          + `${w.sandbox_count} ${w.sandbox_count === 1 ? "sandbox" : "sandboxes"}`)));
    if (may.manage(w.role)) {
      item.append(h("button", {
        type: "button", class: "danger small",
        onclick: async () => {
          const ok = await confirmDialog(`Delete ${w.name}?`,
            `This deletes the workspace ${w.name}, its ${w.sandbox_count} sandboxes and `
            + `the memberships of its ${w.member_count} members. It cannot be undone.`,
            `Delete ${w.name}`);
          if (!ok) return;
          try {
            await api("DELETE", `/api/workspaces/${w.id}`);
            item.remove();
            announce(`Deleted ${w.name}.`);
          } catch (e) {
            error.textContent = explain(e);
          }
        },
      }, "Delete…"));
    }
    return item;
  };

  const name = h("input", { name: "name", required: true, maxlength: 64 });
  const create = async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const w = await api("POST", "/api/workspaces", { name: name.value });
      announce(`Created ${w.name}.`);
      go(`/w/${w.id}/sandboxes`);
    } catch (e) {
      error.textContent = explain(e);
    }
  };
  replace(list, rows.map(card));
  replace(main,
    h("h1", {}, "Workspaces"),
    h("form", { class: "row", onsubmit: create, "aria-label": "Create a workspace" },
      field("New workspace", name), h("button", { type: "submit" }, "Create")),
    error,
    rows.length ? list : h("p", { class: "muted" }, "No workspace yet: create one above."));
}
