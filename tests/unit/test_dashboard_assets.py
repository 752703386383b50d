"""The dashboard's files: shipped in the package, light, and loading nothing from elsewhere."""

from __future__ import annotations

import re

from supervise.supervisor.dashboard import ASSETS

PAGE_WEIGHT_LIMIT = 200 * 1024


def test_every_asset_together_weighs_at_most_200_kb() -> None:
    total = sum(len(body) for body in ASSETS.values())
    assert total <= PAGE_WEIGHT_LIMIT, f"{total} bytes: {sorted((len(b), n) for n, b in ASSETS.items())}"


def test_the_page_and_its_modules_load_only_files_of_the_package() -> None:
    html = ASSETS["index.html"].decode()
    referenced = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', html))
    for name, body in ASSETS.items():
        if name.endswith(".js"):
            referenced |= {m.lstrip("./") for m in re.findall(r'from "(\./[^"]+)"', body.decode())}
    assert referenced <= set(ASSETS), referenced - set(ASSETS)
    assert {"app.js", "app.css"} <= referenced


def test_no_asset_names_another_origin() -> None:
    for name, body in ASSETS.items():
        text = body.decode()
        # the SVG namespace URIs are names, not requests
        found = [u for u in re.findall(r"https?://[^\s\"'`)]+", text) if not u.startswith("http://www.w3.org/")]
        assert not found, f"{name} refers to {found}"
