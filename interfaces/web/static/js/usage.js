// Usage of the Anthropic API through the proxy: daily requests and tokens per sandbox
// over 30 days, as charts; the daily limits in force, which the owner edits.
import { all, api, explain, page } from "./api.js";
import { announce, field, h, replace } from "./dom.js";
import { PALETTE, stackedBars } from "./chart.js";
import { may } from "./roles.js";

const DAYS = 30;

function lastDays(n) {
  const out = [];
  const today = new Date();
  for (let i = n - 1; i >= 0; i -= 1) {
    const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

// The report with all its days: they come a page at a time (docs/api.md "Paging").
async function wholeReport(path) {
  let got = await page(path);
  const report = got.rows;
  for (let i = 0; got.next && i < 1000; i += 1) {
    got = await page(got.next);
    report.days = report.days.concat(got.rows.days);
  }
  return report;
}

const tokens = (r) => r.input_tokens + r.output_tokens + r.cache_creation_input_tokens + r.cache_read_input_tokens;
const limitText = (n) => (n === null || n === undefined ? "no limit" : n.toLocaleString());

export async function usage(ctx) {
  const { wid, panel } = ctx;
  const [report, boxes] = await Promise.all([
    wholeReport(`/api/workspaces/${wid}/usage?days=${DAYS}&limit=1000`),
    all(`/api/workspaces/${wid}/sandboxes`),
  ]);
  const names = new Map(boxes.map((b) => [b.id, b.name]));
  const days = lastDays(DAYS);
  const index = new Map(days.map((d, i) => [d, i]));
  const bySandbox = new Map();
  for (const r of report.days) {
    if (!bySandbox.has(r.sandbox_id)) {
      bySandbox.set(r.sandbox_id, { requests: new Array(DAYS).fill(0), tokens: new Array(DAYS).fill(0) });
    }
    const i = index.get(r.day);
    if (i === undefined) continue;
    bySandbox.get(r.sandbox_id).requests[i] += r.requests;
    bySandbox.get(r.sandbox_id).tokens[i] += tokens(r);
  }
  const ids = [...bySandbox.keys()];
  const label = (id) => names.get(id) || `deleted sandbox ${id.slice(0, 8)}`;
  const series = (key) => ids.map((id) => ({ name: label(id), values: bySandbox.get(id)[key] }));
  const legend = h("ul", { class: "legend", "aria-label": "Sandboxes in the charts" }, ids.map((id, k) =>
    h("li", {}, h("span", { class: "swatch", "data-colour": String(k % PALETTE.length) }), label(id))));
  const totals = h("table", {},
    h("caption", {}, `Totals over ${DAYS} days`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Sandbox"), h("th", { scope: "col" }, "Requests"), h("th", { scope: "col" }, "Tokens"))),
    h("tbody", {}, ids.map((id) => h("tr", {},
      h("th", { scope: "row" }, label(id)),
      h("td", {}, bySandbox.get(id).requests.reduce((a, b) => a + b, 0).toLocaleString()),
      h("td", {}, bySandbox.get(id).tokens.reduce((a, b) => a + b, 0).toLocaleString())))));

  const limits = report.limits;
  const error = h("p", { class: "error", role: "alert" });
  let form = null;
  if (may.manage(ctx.role)) {
    const requests = h("input", { type: "number", min: 0, name: "daily_requests", value: limits.own.daily_requests ?? "", placeholder: "default" });
    const tokensIn = h("input", { type: "number", min: 0, name: "daily_tokens", value: limits.own.daily_tokens ?? "", placeholder: "default" });
    const number = (input) => (input.value === "" ? null : Number(input.value));
    form = h("form", { class: "row", "aria-label": "Set the daily limits", onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const set = await api("PUT", `/api/workspaces/${wid}/limits`, { daily_requests: number(requests), daily_tokens: number(tokensIn) });
        announce(`Limits saved: requests a day, ${limitText(set.daily_requests)}; tokens a day, ${limitText(set.daily_tokens)}.`);
        await usage(ctx);
      } catch (e) {
        error.textContent = explain(e);
      }
    } }, field("Requests a day", requests, "empty: the default"), field("Tokens a day", tokensIn, "empty: the default"),
    h("button", { type: "submit" }, "Save limits"));
  }
  // Drawn for the room there is (and again when it changes), so the text stays legible.
  const charts = h("div", {});
  let drawnFor = 0;
  const drawCharts = () => {
    const room = panel.clientWidth - 20;
    if (Math.abs(room - drawnFor) < 40) return;
    drawnFor = room;
    replace(charts,
      h("figure", {}, h("figcaption", {}, `Requests a day, last ${DAYS} days`), stackedBars("Requests a day", days, series("requests"), room)),
      h("figure", {}, h("figcaption", {}, `Tokens a day, last ${DAYS} days`), stackedBars("Tokens a day", days, series("tokens"), room)));
  };
  new ResizeObserver(drawCharts).observe(panel);
  replace(panel,
    h("h2", { id: "panel-title" }, "Usage and limits"),
    h("p", {}, `In force: requests a day, ${limitText(limits.daily_requests)}; tokens a day, ${limitText(limits.daily_tokens)}.`),
    form, error,
    charts,
    ids.length ? [legend, totals] : h("p", { class: "muted" }, "No request through the Anthropic proxy in these days."));
  drawCharts();
}
