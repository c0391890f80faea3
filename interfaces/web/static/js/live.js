// A workspace's live events (GET /api/workspaces/{id}/events, Server-Sent Events). The
// browser reconnects by itself with Last-Event-ID, so nothing is missed; "ready" comes
// first on every (re)connection, after which a page reloads what it shows.

export function follow(workspaceId, handlers) {
  const source = new EventSource(`/api/workspaces/${workspaceId}/events`);
  const indicator = handlers.indicator;
  const show = (text, state) => {
    if (indicator) {
      indicator.textContent = text;
      indicator.dataset.state = state;
    }
  };
  show("Connecting…", "connecting");
  source.addEventListener("ready", () => {
    show("Live", "live");
    if (handlers.ready) handlers.ready();
  });
  for (const kind of ["sandbox", "member", "workspace"]) {
    source.addEventListener(kind, (event) => {
      const entry = JSON.parse(event.data);
      if (handlers[kind]) handlers[kind](entry);
      if (handlers.any) handlers.any(entry);
    });
  }
  source.addEventListener("end", (event) => {
    source.close();
    show("Stopped", "stopped");
    if (handlers.end) handlers.end(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) show("Stopped", "stopped");
    else show("Reconnecting…", "connecting");
  });
  return () => source.close();
}
