// A workspace's members: add by username with a role, change a role, remove, leave.
// What the person's role may not do is not offered (the API refuses it all the same).
import { all, api, explain } from "./api.js";
import { announce, confirmDialog, field, h, replace } from "./dom.js";
import { ROLES, grantable, may } from "./roles.js";

export async function members(ctx) {
  const { wid, panel, me } = ctx;
  const error = h("p", { class: "error", role: "alert" });
  const list = h("ul", { class: "rows", "aria-label": "Members" });
  let rows = [];

  const act = async (fn) => {
    error.textContent = "";
    try {
      await fn();
    } catch (e) {
      error.textContent = explain(e);
    }
  };

  const row = (m) => {
    const self = m.user_id === me.id;
    const parts = [h("div", { class: "what" }, h("strong", {}, m.username), self ? h("span", { class: "muted" }, " (you)") : null)];
    if (may.manage(ctx.role) && !self) {
      const select = h("select", { "aria-label": `Role of ${m.username}` },
        ROLES.map((r) => h("option", { value: r, selected: r === m.role }, r)));
      select.addEventListener("change", () => act(async () => {
        await api("PUT", `/api/workspaces/${wid}/members/${m.user_id}`, { role: select.value });
        announce(`${m.username} is now ${select.value}.`);
        await load();
      }));
      parts.push(select);
    } else {
      parts.push(h("span", { class: `badge role-${m.role}` }, m.role));
    }
    const actions = [];
    if (self) {
      actions.push(h("button", { type: "button", class: "small danger", onclick: async () => {
        if (!(await confirmDialog("Leave this workspace?", `You will lose access to ${ctx.workspace.name}.`, "Leave"))) return;
        await act(async () => {
          await api("DELETE", `/api/workspaces/${wid}/members/${m.user_id}`);
          announce(`You left ${ctx.workspace.name}.`);
          ctx.go("/");
        });
      } }, "Leave"));
    } else if (may.manage(ctx.role)) {
      actions.push(h("button", { type: "button", class: "small danger", "aria-label": `Remove ${m.username}`, onclick: async () => {
        if (!(await confirmDialog(`Remove ${m.username}?`, `${m.username} will lose access to ${ctx.workspace.name} at once.`, "Remove"))) return;
        await act(async () => {
          await api("DELETE", `/api/workspaces/${wid}/members/${m.user_id}`);
          announce(`Removed ${m.username}.`);
          await load();
        });
      } }, "Remove"));
    }
    return h("li", { class: "row-item", "data-user": m.username }, parts, h("div", { class: "actions" }, actions));
  };

  const draw = () => replace(list, rows.map(row));
  async function load() {
    rows = await all(`/api/workspaces/${wid}/members`);
    draw();
  }
  ctx.on("member", () => load().catch((e) => { error.textContent = explain(e); }));
  ctx.on("ready", () => load().catch((e) => { error.textContent = explain(e); }));

  let form = null;
  if (may.addMember(ctx.role)) {
    const username = h("input", { name: "username", required: true, autocomplete: "off" });
    const role = h("select", { name: "role" },
      grantable(ctx.role).map((r) => h("option", { value: r, selected: r === "developer" }, r)));
    form = h("form", { class: "row", "aria-label": "Add a member", onsubmit: (event) => {
      event.preventDefault();
      act(async () => {
        const m = await api("POST", `/api/workspaces/${wid}/members`, { username: username.value, role: role.value });
        announce(`Added ${m.username} as ${m.role}.`);
        username.value = "";
        await load();
      });
    } }, field("Username", username), field("Role", role), h("button", { type: "submit" }, "Add member"));
  }
  replace(panel, h("h2", { id: "panel-title" }, "Members"), form, error, list);
  await load();
}
