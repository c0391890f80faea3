// Local agents: a one-time code and the exact command that registers this machine's
// agent with it; the workspace's local sandboxes, online and offline live.
import { all, api, explain } from "./api.js";
import { announce, h, replace, timeEl } from "./dom.js";
import { may } from "./roles.js";

export async function agents(ctx) {
  const { wid, panel } = ctx;
  const error = h("p", { class: "error", role: "alert" });
  const codeBox = h("div", { class: "code-box" });
  const list = h("ul", { class: "rows", "aria-label": "Local sandboxes" });
  const rows = new Map();

  const draw = () => {
    const local = [...rows.values()].filter((b) => b.kind === "local");
    replace(list, local.length ? local.map((b) => h("li", { class: "row-item", "data-id": b.id, "data-status": b.status },
      h("div", { class: "what" }, h("strong", {}, b.name), h("span", { class: "muted" }, ` ${b.type}`)),
      h("span", { class: `badge status-${b.status}`, "data-testid": "status" }, b.status === "running" ? "online" : b.status)))
      : h("li", { class: "muted" }, "No local agent registered yet."));
  };
  const load = async () => {
    rows.clear();
    for (const b of await all(`/api/workspaces/${wid}/sandboxes`)) rows.set(b.id, b);
    draw();
  };
  ctx.on("sandbox", (entry) => {
    if (entry.item) rows.set(entry.id, entry.item);
    else rows.delete(entry.id);
    draw();
  });
  ctx.on("ready", () => load().catch((e) => { error.textContent = explain(e); }));

  const makeCode = async () => {
    error.textContent = "";
    try {
      const code = await api("POST", `/api/workspaces/${wid}/agent-code`);
      const command = `sandbar agent register --server ${window.location.origin} --code ${code.code} --name my-laptop`;
      const pre = h("pre", { tabindex: "0", "aria-label": "Command to run" }, h("code", { "data-testid": "command" }, command));
      const copy = h("button", { type: "button", class: "small secondary", onclick: async () => {
        try {
          await navigator.clipboard.writeText(command);
          copy.textContent = "Copied";
          announce("The command is copied.");
        } catch {
          announce("Copying failed: select the command and copy it.");
        }
      } }, "Copy");
      replace(codeBox,
        h("p", {}, "On the machine that runs the agent, run (once), then ", h("code", {}, "sandbar agent connect"), ":"),
        h("div", { class: "command" }, pre, copy),
        h("p", { class: "muted" }, "The code works once, until ", timeEl(code.expires_at), "."));
      announce("A one-time code is ready.");
    } catch (e) {
      error.textContent = explain(e);
    }
  };
  replace(panel,
    h("h2", { id: "panel-title" }, "Local agents"),
    h("p", {}, "A local agent runs on a member's own machine and is reached through Sandbar like any sandbox."),
    may.operate(ctx.role)
      ? h("button", { type: "button", onclick: makeCode }, "Make a one-time code")
      : h("p", { class: "muted" }, "Registering an agent needs the developer role."),
    error, codeBox,
    h("h3", {}, "Local sandboxes"), list);
  await load();
}
