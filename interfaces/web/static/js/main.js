// The console's entry: who is signed in, and which page the address (#/...) names.
import { ApiError, api, explain, get } from "./api.js";
import { announce, h, replace } from "./dom.js";
import { account, signIn, signUp } from "./auth.js";
import { workspaces } from "./workspaces.js";
import { workspace } from "./workspace.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leave = null; // the shown page's clean-up (its live stream)
const session = { me: null };

const routes = [
  [/^\/signin$/, () => signIn(session, go)],
  [/^\/signup$/, () => signUp(session, go)],
  [/^\/account$/, () => account(session, go)],
  [/^\/w\/([0-9a-f-]{36})(?:\/([a-z]+))?$/, (m) => workspace(session, m[1], m[2] || "sandboxes", go)],
  [/^\/?$/, () => workspaces(session, go)],
];
const open = new Set(["/signin", "/signup"]);

export function go(path) {
  if (window.location.hash === `#${path}`) render();
  else window.location.hash = path;
}

function drawNav() {
  if (!session.me) {
    replace(nav, h("a", { href: "#/signin" }, "Sign in"), h("a", { href: "/docs" }, "API docs"));
    return;
  }
  const signOut = async () => {
    try {
      await api("POST", "/api/auth/logout");
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
    }
    session.me = null;
    announce("Signed out.");
    go("/signin");
  };
  replace(nav,
    h("a", { href: "#/" }, "Workspaces"),
    h("a", { href: "#/account" }, session.me.username),
    h("a", { href: "/docs" }, "API docs"),
    h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"));
}

async function render() {
  if (leave) {
    leave();
    leave = null;
  }
  const path = window.location.hash.replace(/^#/, "") || "/";
  if (!path.startsWith("/")) return; // (an in-page anchor)
  if (!session.me && !open.has(path)) {
    try {
      session.me = await get("/api/auth/me");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        drawNav();
        go("/signin");
        return;
      }
      replace(main, h("p", { class: "error", role: "alert" }, explain(error)));
      return;
    }
  }
  drawNav();
  for (const [pattern, page] of routes) {
    const match = path.match(pattern);
    if (match) {
      try {
        leave = (await page(match)) || null;
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          session.me = null;
          go("/signin");
          return;
        }
        replace(main, h("h1", {}, "Sandbar"), h("p", { class: "error", role: "alert" }, explain(error)));
      }
      const heading = main.querySelector("h1");
      if (heading) document.title = `${heading.textContent} · Sandbar`;
      return;
    }
  }
  replace(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "To your workspaces")));
}

window.addEventListener("hashchange", render);
render();
