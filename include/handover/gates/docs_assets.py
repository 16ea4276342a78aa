"""Great Expectations' Data Docs, served with their scripts and styles from this origin.

GX's page templates load jQuery, bootstrap, bootstrap-table, vega and Font Awesome from
public CDNs. Served under the Airflow UI's origin, where the plugin puts the pages, a
script from a CDN would run beside the user's session, and the plugin's
Content-Security-Policy refuses it; in a network without internet it could not load
anyway. This module maps every CDN address GX 1.x writes to the same file of an npm
package pinned in docs-assets/package.json (installed by scripts/bootstrap.sh), rewrites
a page's addresses to the plugin's ``vendor/`` route, and finds the files that route
serves. ``bundle`` does the same to a whole site when a run publishes it, with the files
copied into the site, so that the pages also work opened straight from the lake. An
address not in the map stays as it is (the browser refuses it); without the installed
packages every address stays, and the pages are readable without styles.
"""

from __future__ import annotations

import posixpath
import re
import shutil
from pathlib import Path

from handover.core.paths import PROJECT_ROOT

ASSETS = PROJECT_ROOT / "docs-assets" / "node_modules"

#: CDN address in GX's templates -> file under docs-assets/node_modules. Versions are the
#: ones GX asks for, except popper.js: GX asks for 1.12.9, bootstrap 4.3.1 declares
#: ^1.14.7, and the pinned 1.16.1 is what bootstrap was built against.
VENDOR: dict[str, str] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    # GX asks for the 1.19.0 stylesheets of the 1.19.1 extension; the 1.19.1 ones are served
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "@fortawesome/fontawesome-free/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
}


def _package(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0].startswith("@") else parts[0]


#: Packages whose files the route serves (a stylesheet's fonts and images included).
PACKAGES = frozenset(_package(p) for p in VENDOR.values())

# GX's logo from its S3 bucket, with a timestamp query; the site has the same image.
_LOGO = re.compile(
    r'"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/'
    r'(logo-long\.png)(?:\?[^"]*)?"'
)


# The site's own static files, addressed relative to the page. GX counts one folder too few
# on validation pages (five deep, it writes four '../'), so the favicon 404s; every such
# address is rewritten from the page's real depth.
_STATIC = re.compile(r'(href|src)="(?:\./|(?:\.\./)+)static/')


def installed() -> bool:
    return ASSETS.is_dir()


def rewrite(page: str, vendor_url: str, site_url: str) -> str:
    """`page` with each mapped CDN address replaced by `vendor_url` + its file (when that
    file is installed), GX's remote logo by the site's own and the site's static files
    addressed from the page's depth (`site_url`: the URL of the Data Docs site's root,
    relative to the page, '' or ending in '/')."""
    if installed():
        for url, path in VENDOR.items():
            quoted = f'"{url}"'
            if quoted in page and (ASSETS / path).is_file():
                page = page.replace(quoted, f'"{vendor_url}{path}"')
    page = _STATIC.sub(lambda m: f'{m.group(1)}="{site_url or "./"}static/', page)
    return _LOGO.sub(f'"{site_url}static/images/\\1"', page)


#: What a stylesheet loads beside itself (Font Awesome's webfonts): url(...) not data:.
_CSS_URL = re.compile(r"url\(\s*['\"]?(?!data:)([^'\")?#]+)")


def _with_css_files(paths: set[str]) -> set[str]:
    """`paths` and the files their stylesheets load, as paths under ASSETS."""
    out = set(paths)
    for path in paths:
        if not path.endswith(".css"):
            continue
        base = posixpath.dirname(path)
        for ref in _CSS_URL.findall((ASSETS / path).read_text(encoding="utf-8", errors="replace")):
            found = posixpath.normpath(posixpath.join(base, ref.strip()))
            if not found.startswith("..") and (ASSETS / found).is_file():
                out.add(found)
    return out


def bundle(site: Path) -> dict[str, int]:
    """Make a built Data Docs site self-contained: every page addresses the site's own
    `vendor/` folder instead of the CDNs, and the files its pages load (with the fonts
    their stylesheets load) are copied there. Opened from the lake, offline or from a
    downloaded copy, the pages then load nothing from elsewhere. Idempotent: pages already
    rewritten stay as they are, files already there are not copied again.

    Without the installed packages (scripts/bootstrap.sh) nothing changes and `skipped` is
    1: the pages stay readable, without styles where the CDNs cannot be reached."""
    if not installed() or not site.is_dir():
        return {"pages": 0, "files": 0, "skipped": 1}
    used: set[str] = set()
    pages = 0
    for page in sorted(site.rglob("*.html")):
        rel = page.relative_to(site)
        if rel.parts[0] == "vendor":
            continue
        up = "../" * (len(rel.parts) - 1)
        text = page.read_text(encoding="utf-8")
        out = rewrite(text, f"{up}vendor/", up)
        used |= {path for path in VENDOR.values() if f'"{up}vendor/{path}"' in out}
        if out != text:
            tmp = page.with_name(page.name + ".tmp")
            tmp.write_text(out, encoding="utf-8")
            tmp.replace(page)
            pages += 1
    files = 0
    for path in sorted(_with_css_files(used)):
        source, dest = ASSETS / path, site / "vendor" / path
        if dest.is_file() and dest.stat().st_size == source.stat().st_size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        files += 1
    return {"pages": pages, "files": files, "skipped": 0}


def vendor_file(path: str) -> Path | None:
    """The installed file for ``vendor/<path>``, or None: outside the mapped packages,
    missing, or not a plain relative path."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        return None
    if _package(path) not in PACKAGES:
        return None
    root = ASSETS.resolve()
    found = (ASSETS / path).resolve()
    if root not in found.parents or not found.is_file():
        return None
    return found
