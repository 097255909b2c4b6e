"""The dashboard's files as the API process serves them (no browser needed)."""

import re

from app.web.router import STATIC


def test_index_is_served_with_a_strict_policy(api):
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert api.head("/").status_code == 200
    # Every file the page names is served, and nothing is loaded from elsewhere.
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert not [u for u in refs if u.startswith(("http:", "https:", "//"))], refs
    for ref in (u for u in refs if u.startswith("/ui/")):
        assert api.get(ref).status_code == 200, ref


def test_static_files_and_errors(api):
    js = api.get("/ui/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    missing = api.get("/ui/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get("/ui/../main.py").status_code == 404
    # No module imports anything from another origin.
    for path in STATIC.rglob("*.js"):
        if "vendor" in path.parts:
            continue
        imports = re.findall(r'^import .* from "([^"]+)";$', path.read_text(), re.M)
        assert all(i.startswith("./") or i.startswith("../") for i in imports), (path, imports)
