// A small stacked bar chart as inline SVG, drawn here (no library, no other host): one
// bar per day, one colour per series. It is an image with a text alternative; the
// numbers are in a table beside it.

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#1d4e89", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d5a97", "#30638e", "#a26769"];

function el(tag, attrs, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c);
  return node;
}

function short(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

// The smallest of 4, 1, 2 or 5 times a power of ten that is at least n (axis ends).
function niceCeiling(n) {
  if (n <= 4) return 4;
  const power = 10 ** Math.floor(Math.log10(n));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= n);
}

// days: ["2026-11-07", ...]; series: [{name, values: [n per day]}]
// width: the room it has, in CSS pixels (its text keeps its size on a phone).
export function stackedBars(title, days, series, room = 960) {
  const width = Math.round(Math.max(320, Math.min(960, room)));
  const height = 220;
  const left = 48;
  const bottom = 28;
  const top = 12;
  const totals = days.map((_, i) => series.reduce((s, x) => s + x.values[i], 0));
  const max = niceCeiling(Math.max(...totals, 0));
  const plotH = height - top - bottom;
  const step = (width - left - 8) / Math.max(1, days.length);
  const barW = Math.max(2, step * 0.7);
  const total = totals.reduce((a, b) => a + b, 0);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
    "aria-label": `${title}: ${short(total)} in ${days.length} days, at most ${short(Math.max(...totals, 0))} in a day`,
  }, el("title", {}, title));
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    svg.append(el("line", { x1: left, x2: width - 4, y1: y, y2: y, class: "grid" }));
    const label = el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" });
    label.textContent = short(Math.round(max * f));
    svg.append(label);
  }
  days.forEach((day, i) => {
    let y = top + plotH;
    const x = left + i * step + (step - barW) / 2;
    series.forEach((s, k) => {
      const v = s.values[i];
      if (!v) return;
      const h = (v / max) * plotH;
      y -= h;
      const rect = el("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: PALETTE[k % PALETTE.length] });
      rect.append(el("title", {}, `${day} · ${s.name}: ${v.toLocaleString()}`));
      svg.append(rect);
    });
    const every = width < 600 ? 14 : 7;
    if ((days.length - 1 - i) % every === 0) { // (a week or two apart, today last)
      const last = i === days.length - 1;
      const label = el("text", { x: last ? x + barW : x + barW / 2, y: height - 8, "text-anchor": last ? "end" : "middle", class: "axis" });
      label.textContent = day.slice(5);
      svg.append(label);
    }
  });
  return svg;
}
