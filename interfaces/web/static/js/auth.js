// Signing in and up (a password, or a provider's button), and the account page.
import { api, explain, get } from "./api.js";
import { announce, field, h, replace, timeEl } from "./dom.js";

const main = () => document.getElementById("main");
// A linked provider's name for people when this Sandbar no longer offers it.
const KNOWN = { github: "GitHub", generic: "Single sign-on" };

async function configuredProviders() {
  try {
    return await get("/api/auth/providers");
  } catch {
    return [];
  }
}

function providerButtons(providers, next, link) {
  if (!providers.length) return null;
  const query = new URLSearchParams({ next });
  if (link) query.set("link", "true");
  return h("ul", { class: "providers" }, providers.map((p) =>
    h("li", {}, h("a", { class: "button secondary", href: `${p.url}?${query}` },
      link ? `Link ${p.label}` : `Continue with ${p.label}`))));
}

function passwordForm(kind, session, go) {
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", {
    name: "password", type: "password", required: true, minlength: 8,
    autocomplete: kind === "signup" ? "new-password" : "current-password",
  });
  const email = h("input", { name: "email", type: "email", autocomplete: "email" });
  const error = h("p", { class: "error", role: "alert" });
  const submit = async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { username: username.value, password: password.value };
    if (kind === "signup" && email.value) body.email = email.value;
    try {
      await api("POST", kind === "signup" ? "/api/auth/register" : "/api/auth/login", body);
      session.me = await get("/api/auth/me");
      announce(`Signed in as ${session.me.username}.`);
      go("/");
    } catch (e) {
      error.textContent = explain(e);
    }
  };
  return h("form", { onsubmit: submit, class: "stack", "aria-label": kind === "signup" ? "Sign up" : "Sign in" },
    field("Username", username, kind === "signup" ? "3 to 32 of a-z, 0-9, _ and -" : null),
    field("Password", password, kind === "signup" ? "at least 8 characters" : null),
    kind === "signup" ? field("Email (optional)", email) : null,
    error,
    h("button", { type: "submit" }, kind === "signup" ? "Create account" : "Sign in"));
}

export async function signIn(session, go) {
  const providers = providerButtons(await configuredProviders(), "/", false);
  replace(main(), h("section", { class: "narrow" },
    h("h1", {}, "Sign in to Sandbar"),
    passwordForm("signin", session, go),
    providers ? [h("p", { class: "muted" }, "or"), providers] : null,
    h("p", {}, "New here? ", h("a", { href: "#/signup" }, "Create an account"))));
}

export async function signUp(session, go) {
  const providers = providerButtons(await configuredProviders(), "/", false);
  replace(main(), h("section", { class: "narrow" },
    h("h1", {}, "Create a Sandbar account"),
    passwordForm("signup", session, go),
    providers ? [h("p", { class: "muted" }, "or"), providers] : null,
    h("p", {}, "Have an account? ", h("a", { href: "#/signin" }, "Sign in"))));
}

// The account: who the person is, the provider accounts linked to it (from
// /api/auth/me), and a button to link each configured provider not linked yet.
export async function account(session) {
  const [me, configured] = await Promise.all([get("/api/auth/me"), configuredProviders()]);
  session.me = me;
  const label = (name) => (configured.find((p) => p.name === name) || {}).label
    || KNOWN[name] || name;
  const linked = me.providers || [];
  const linkedNames = new Set(linked.map((p) => p.provider));
  const links = providerButtons(configured.filter((p) => !linkedNames.has(p.name)), "/#/account", true);
  replace(main(), h("section", { class: "narrow" },
    h("h1", {}, "Your account"),
    h("dl", { class: "facts" },
      h("dt", {}, "Username"), h("dd", {}, me.username),
      h("dt", {}, "Name"), h("dd", {}, me.display_name),
      h("dt", {}, "Email"), h("dd", {}, me.email || "none"),
      h("dt", {}, "Member since"), h("dd", {}, timeEl(me.created_at))),
    h("h2", {}, "Sign-in providers"),
    linked.length
      ? h("ul", { class: "rows", "aria-label": "Linked providers" }, linked.map((p) =>
        h("li", { class: "row-item", "data-provider": p.provider },
          h("div", { class: "what" }, h("strong", {}, label(p.provider))),
          h("span", { class: "muted" }, "linked ", timeEl(p.linked_at)))))
      : h("p", { class: "muted" }, "No provider's account is linked to this one."),
    links
      ? [h("p", {}, "Link a provider's account to this one, to sign in with it too:"), links]
      : configured.length
        ? null
        : h("p", { class: "muted" }, "No sign-in provider is configured on this Sandbar.")));
}
