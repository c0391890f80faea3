// A workspace's history, newest first: who did what and when, filtered by person and
// kind, a page at a time; and the workspace "as it was at" a chosen moment, replayed
// from the log.
import { all, explain, get, page } from "./api.js";
import { field, h, replace, timeEl, when } from "./dom.js";

const WORDS = {
  "Workspace.Created": "created the workspace",
  "Workspace.LimitsSet": "set the daily limits",
  "Workspace.Deleted": "deleted the workspace",
  "Membership.Added": "added a member",
  "Membership.Rejoined": "added back a member",
  "Membership.RoleChanged": "changed a role",
  "Membership.Removed": "removed a member",
  "Sandbox.Requested": "created a sandbox",
  "Sandbox.PauseRequested": "paused a sandbox",
  "Sandbox.ResumeRequested": "resumed a sandbox",
  "Sandbox.DeletionRequested": "deleted a sandbox",
  "Sandbox.DeletionDelayed": "could not delete a sandbox yet",
  "Sandbox.Started": "started a sandbox",
  "Sandbox.Resumed": "resumed a sandbox",
  "Sandbox.Relocated": "moved a sandbox",
  "Sandbox.Failed": "saw a sandbox fail",
  "Sandbox.Paused": "paused a sandbox",
  "Sandbox.Deleted": "removed a sandbox",
  "Sandbox.Connected": "connected a local agent",
  "Sandbox.Disconnected": "lost a local agent",
};

function what(entry) {
  const item = entry.item;
  if (entry.kind === "sandbox") return item ? `${item.name} (${item.status})` : `sandbox ${entry.id.slice(0, 8)}`;
  if (entry.kind === "member") return item ? `${item.username} as ${item.role}` : `user ${entry.id.slice(0, 8)}`;
  return item ? item.name : "";
}

// A datetime-local value (local time) from an RFC 3339 time, to the second.
function localValue(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export async function history(ctx) {
  const { wid, panel } = ctx;
  const members = await all(`/api/workspaces/${wid}/members`);
  const error = h("p", { class: "error", role: "alert" });
  const list = h("ol", { class: "log", "aria-label": "History, newest first" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show older");
  const person = h("select", { name: "person" }, h("option", { value: "" }, "anyone"),
    members.map((m) => h("option", { value: m.user_id }, m.username)));
  const kind = h("select", { name: "kind" },
    [["", "everything"], ["sandbox", "sandboxes"], ["member", "members"], ["workspace", "the workspace"]]
      .map(([v, t]) => h("option", { value: v }, t)));
  const moment = h("input", { type: "datetime-local", name: "at", step: 1, required: true, value: localValue(new Date().toISOString()) });
  const then = h("div", { class: "as-at", "aria-live": "polite" });
  let next = null;

  const entry = (e) => h("li", { "data-position": e.position },
    timeEl(e.time), " ",
    h("strong", {}, e.actor_name || e.actor), " ",
    WORDS[e.event] || e.event, ": ", h("span", {}, what(e)), " ",
    h("button", { type: "button", class: "link small", "aria-label": `Show the workspace as it was at ${when(e.time)}`,
      onclick: () => { moment.value = localValue(e.time); showAt(e.time); } }, "as it was then"));

  const load = async (from) => {
    error.textContent = "";
    try {
      const got = await page(from);
      list.append(...got.rows.map(entry));
      next = got.next;
      more.hidden = !next;
      if (!list.children.length) list.append(h("li", { class: "muted" }, "Nothing yet."));
    } catch (e) {
      error.textContent = explain(e);
    }
  };
  const first = () => {
    replace(list);
    const query = new URLSearchParams({ limit: "50" });
    if (person.value) query.set("person", person.value);
    if (kind.value) query.set("kind", kind.value);
    return load(`/api/workspaces/${wid}/history?${query}`);
  };
  more.addEventListener("click", () => next && load(next));
  person.addEventListener("change", first);
  kind.addEventListener("change", first);
  ctx.on("sandbox", (e) => prepend(e));
  ctx.on("member", (e) => prepend(e));
  ctx.on("workspace", (e) => prepend(e));
  function prepend(e) {
    if (person.value && e.actor !== person.value && e.id !== person.value) return;
    if (kind.value && e.kind !== kind.value) return;
    if (list.querySelector(`[data-position="${e.position}"]`)) return;
    const empty = list.querySelector(".muted");
    if (empty) empty.remove();
    list.prepend(entry(e));
  }

  async function showAt(iso) {
    try {
      const at = await get(`/api/workspaces/${wid}/as-at?time=${encodeURIComponent(iso)}`);
      const heading = h("h3", { tabindex: "-1" }, `As it was at ${when(at.at)}`);
      if (!at.workspace) {
        replace(then, heading, h("p", { class: "muted" }, "The workspace did not exist then."));
      } else {
        replace(then, heading,
          h("div", { class: "columns" },
            h("section", { "aria-label": "Members then" }, h("h4", {}, `Members (${at.members.length})`),
              h("ul", { class: "plain" }, at.members.map((m) => h("li", {}, h("strong", {}, m.username), ` ${m.role}`)))),
            h("section", { "aria-label": "Sandboxes then" }, h("h4", {}, `Sandboxes (${at.sandboxes.length})`),
              h("ul", { class: "plain" }, at.sandboxes.map((s) => h("li", {}, h("strong", {}, s.name), " ",
                h("span", { class: `badge status-${s.status}` }, s.status)))))));
      }
      heading.focus();
    } catch (e) {
      replace(then, h("p", { class: "error" }, explain(e)));
    }
  }
  const atForm = h("form", { class: "row", "aria-label": "Choose a moment", onsubmit: (event) => {
    event.preventDefault();
    const d = new Date(moment.value);
    if (Number.isNaN(d.getTime())) return;
    showAt(d.toISOString());
  } }, field("As it was at (your local time)", moment), h("button", { type: "submit" }, "Show"));

  replace(panel,
    h("h2", { id: "panel-title" }, "History"),
    h("form", { class: "row", "aria-label": "Filter the history", onsubmit: (e) => e.preventDefault() },
      field("Person", person), field("Kind", kind)),
    error, list, more,
    h("h2", {}, "As it was at"), atForm, then);
  await first();
}
