// One workspace: its name and the person's role, a tab per part, and the live stream
// that keeps every part current without a reload.
import { get } from "./api.js";
import { h, replace } from "./dom.js";
import { follow } from "./live.js";
import { sandboxes } from "./sandboxes.js";
import { members } from "./members.js";
import { agents } from "./agents.js";
import { usage } from "./usage.js";
import { history } from "./history.js";

const TABS = [
  ["sandboxes", "Sandboxes", sandboxes],
  ["members", "Members", members],
  ["agents", "Local agents", agents],
  ["usage", "Usage and limits", usage],
  ["history", "History", history],
];

export async function workspace(session, wid, tab, go) {
  const main = document.getElementById("main");
  const found = TABS.find(([name]) => name === tab);
  if (!found) {
    go(`/w/${wid}/sandboxes`);
    return null;
  }
  const w = await get(`/api/workspaces/${wid}`);
  const listeners = { sandbox: [], member: [], workspace: [], ready: [] };
  const indicator = h("span", { class: "live-state", "data-state": "connecting" }, "Connecting…");
  const notice = h("div", { role: "alert" });
  const panel = h("section", { class: "panel", "aria-labelledby": "panel-title" });
  const ctx = {
    session, wid, workspace: w, role: w.role, me: session.me, panel, go,
    on: (kind, fn) => listeners[kind].push(fn),
  };
  const emit = (kind, value) => listeners[kind].forEach((fn) => fn(value));
  const stop = follow(wid, {
    indicator,
    ready: () => emit("ready"),
    sandbox: (e) => emit("sandbox", e),
    workspace: (e) => {
      if (e.item) replace(title, e.item.name);
      emit("workspace", e);
    },
    member: (e) => {
      if (e.id === session.me.id && e.item && e.item.role !== ctx.role) {
        // (my own role changed: what I may do changed; show the tab anew)
        go(`/w/${wid}/${tab}`);
        return;
      }
      emit("member", e);
    },
    end: (why) => {
      replace(notice, h("p", { class: "error" },
        why.code === "workspace_not_found"
          ? "You are no longer a member of this workspace (or it was deleted)."
          : "Your session ended; sign in again."), h("a", { href: "#/" }, "To your workspaces"));
    },
  });
  const title = h("span", {}, w.name);
  replace(main,
    h("div", { class: "heading" },
      h("h1", {}, title),
      h("p", { class: "muted" }, "You are ", h("span", { class: `badge role-${w.role}` }, w.role),
        " · ", indicator)),
    notice,
    h("nav", { class: "tabs", "aria-label": "Workspace" }, TABS.map(([name, label]) =>
      h("a", { href: `#/w/${wid}/${name}`, "aria-current": name === tab ? "page" : null }, label))),
    panel);
  await found[2](ctx);
  return stop;
}
