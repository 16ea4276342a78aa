"""The Data Docs pages' CDN files, pinned in docs-assets/ and served from the plugin's own
origin: every address GX writes is mapped, every mapped file is installed, and the route
serves nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from handover.gates import docs_assets
from tests.unit.test_gates import PAYMENTS_SUITE, gate, payments, write_suite

REMOTE = re.compile(r'(?:src|href)="(https?://[^"]+)"')
#: Links a reader may follow, not files the page loads.
LINKS = ("https://greatexpectations.io",)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A Data Docs site as GX renders it: a failed and a passed validation, and the index."""
    from handover import gates

    tmp = tmp_path_factory.mktemp("site")
    suites, docs = tmp / "suites", tmp / "docs"
    write_suite(suites, "quality", "payments", PAYMENTS_SUITE)
    bad = payments(10)
    bad.loc[2, "channel"] = "paypal"
    gate(bad, suites, partition="p01", docs_dir=docs)
    gate(payments(10), suites, partition="p02", docs_dir=docs)
    gates.build_docs_index(docs)
    return docs


def test_the_pinned_packages_hold_every_mapped_file():
    assert docs_assets.installed(), "run scripts/bootstrap.sh (npm ci in docs-assets/)"
    missing = [p for p in docs_assets.VENDOR.values() if not (docs_assets.ASSETS / p).is_file()]
    assert not missing, missing


def test_every_page_gx_renders_loads_nothing_from_elsewhere_once_rewritten(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 4  # index, suite page, two validations
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert REMOTE.search(text), f"{page}: GX wrote no CDN address; has its template changed?"
        depth = len(page.relative_to(site).parts) - 1
        up = "../" * depth
        out = docs_assets.rewrite(text, f"{up}../../../vendor/", up)
        left = [u for u in REMOTE.findall(out) if not u.startswith(LINKS)]
        assert not left, f"{page.name}: still loads {left}"
        vendored = re.findall(r'(?:src|href)="(?:\.\./)+vendor/([^"]+)"', out)
        assert vendored
        for rel in vendored:  # served by the plugin route from docs-assets/
            assert docs_assets.vendor_file(rel) is not None, rel
        for logo in re.findall(r'src="([^"]*logo-long\.png)"', out):  # the site's own copy
            assert (page.parent / logo).resolve().is_file(), logo


def test_the_route_serves_the_pinned_packages_and_nothing_else():
    assert docs_assets.vendor_file("jquery/dist/jquery.min.js") is not None
    font = "@fortawesome/fontawesome-free/webfonts/fa-solid-900.woff2"  # a stylesheet's font
    assert docs_assets.vendor_file(font) is not None
    for bad in (
        "",
        "../package.json",
        "jquery/../../package.json",
        "jquery//dist/jquery.js",
        "/etc/passwd",
        "jquery\\dist\\jquery.min.js",
        "d3-array/package.json",
        "jquery/dist/missing.js",
        ".package-lock.json",
    ):
        assert docs_assets.vendor_file(bad) is None, bad


def test_without_the_packages_a_page_is_left_as_it_was(monkeypatch, site):
    monkeypatch.setattr(docs_assets, "ASSETS", Path("/nonexistent/node_modules"))
    page = (site / "index.html").read_text(encoding="utf-8")
    out = docs_assets.rewrite(page, "vendor/", "")
    assert REMOTE.findall(out) == [
        u for u in REMOTE.findall(page) if "great-expectations-web-assets" not in u
    ]


LOCAL = re.compile(r'(?:src|href)="((?:\./|(?:\.\./)*)(?:vendor|static)/[^"]+)"')


def test_a_published_site_is_whole_offline(tmp_path, site):
    """bundle(): what a run publishes to the lake opens from there (a file, a downloaded
    copy) with every script, style, font and image of its own, and nothing from a CDN."""
    raw = next(p for p in site.rglob("*.html") if "validations" in p.relative_to(site).parts)
    favicon = re.search(r'href="([^"]*favicon\.ico)"', raw.read_text(encoding="utf-8"))[1]
    assert not (raw.parent / favicon).resolve().is_file()  # GX counts one folder too few

    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    first = docs_assets.bundle(copy)
    assert first["pages"] >= 4 and first["files"] >= 10 and first["skipped"] == 0
    pages = [p for p in copy.rglob("*.html") if "vendor" not in p.relative_to(copy).parts]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert [u for u in REMOTE.findall(text) if not u.startswith(LINKS)] == [], page
        refs = LOCAL.findall(text)
        assert any("/vendor/" in f"/{r}" for r in refs) and any("favicon" in r for r in refs)
        for ref in refs:
            assert (page.parent / ref.split("?")[0]).resolve().is_file(), (page.name, ref)
    fonts = copy / "vendor" / "@fortawesome" / "fontawesome-free" / "webfonts"
    assert (fonts / "fa-solid-900.woff2").is_file()  # loaded by all.min.css, not by a page
    assert docs_assets.bundle(copy) == {"pages": 0, "files": 0, "skipped": 0}


def test_without_the_packages_a_published_site_is_left_as_it_was(monkeypatch, tmp_path, site):
    monkeypatch.setattr(docs_assets, "ASSETS", Path("/nonexistent/node_modules"))
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    assert docs_assets.bundle(copy) == {"pages": 0, "files": 0, "skipped": 1}
    assert not (copy / "vendor").exists()
