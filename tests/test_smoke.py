"""The shortest path through the API: sign up, make a workspace, ask for a sandbox."""


def test_healthz(anonymous):
    r = anonymous.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_sign_up_workspace_sandbox(new_user):
    alice = new_user("alice")
    me = alice.client.get("/api/auth/me").json()
    assert me["username"] == alice.username

    ws = alice.client.post("/api/workspaces", json={"name": "  Team  "})
    assert ws.status_code == 201
    assert ws.json()["name"] == "Team"
    assert ws.json()["role"] == "owner"

    wid = ws.json()["id"]
    sb = alice.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "s", "type": "opencode"}
    )
    assert sb.status_code == 201
    body = sb.json()
    assert body["status"] == "creating"
    assert body["kind"] == "cloud"
    assert body["url"].startswith(f"http://oc-{body['id']}.localhost:")

    listed = alice.client.get(f"/api/workspaces/{wid}/sandboxes").json()
    assert [s["id"] for s in listed] == [body["id"]]
