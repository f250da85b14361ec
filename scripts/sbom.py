"""The CycloneDX SBOM and the licence list of what a Python environment ships (the image's, or .venv).

Usage: python scripts/sbom.py --python /opt/territoire/bin/python --output-dir DIR
Needs cyclonedx-bom and pip-licenses (the `lock` extra), run from another environment than the one described so
that they do not describe themselves. Writes DIR/sbom.cdx.json (CycloneDX JSON, every installed distribution with
its version, licence and hashes where known) and DIR/LICENCES.md: each distribution's licence, then the native
libraries that wheels bundle (`<pkg>.libs/`), whose licences pip does not see, e.g. GEOS in shapely's wheels
(LGPL-2.1: relinkable, we ship it unmodified as its own shared object).
"""

# ruff: noqa: S603 - runs the tools named here on the environment the caller names

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

# Licences of the native libraries that the wheels we ship bundle, by library name prefix.
NATIVE = {
    "libgeos": "LGPL-2.1-only (GEOS)",
    "libproj": "MIT (PROJ)",
    "libsqlite3": "blessing (SQLite, public domain)",
    "libcurl": "curl",
    "libtiff": "libtiff",
    "libjpeg": "IJG",
    "libz": "Zlib",
    "libssl": "Apache-2.0 (OpenSSL)",
    "libcrypto": "Apache-2.0 (OpenSSL)",
    "libopenblas": "BSD-3-Clause (OpenBLAS)",
    "libscipy_openblas": "BSD-3-Clause (OpenBLAS)",
    "libgfortran": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libquadmath": "LGPL-2.1-or-later",
    "libgcc_s": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libstdc++": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libnghttp2": "MIT",
    "libidn2": "LGPL-3.0-or-later",
    "libbrotli": "MIT",
    "libzstd": "BSD-3-Clause",
    "liblzma": "0BSD",
}


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def native_libraries(python: str) -> list[tuple[str, str, str]]:
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    found = []
    for folder in sorted(Path(site).glob("*.libs")):
        for library in sorted(folder.iterdir()):
            base = re.sub(r"-[0-9a-f]{8}\.so.*$|\.so.*$", "", library.name)
            licence = next((v for k, v in NATIVE.items() if base.startswith(k)), "unknown: check before shipping")
            found.append((folder.name.removesuffix(".libs"), library.name, licence))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the python of the environment to describe")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tool("cyclonedx-py"), "environment", "--of", "JSON", "--output-reproducible",
         "-o", str(out / "sbom.cdx.json"), args.python],
        check=True,
    )  # fmt: skip
    listed = subprocess.run(
        [tool("pip-licenses"), "--python", args.python, "--from", "mixed", "--format", "json", "--with-urls"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    lines = ["# Licences of what is shipped", "", "| distribution | version | licence | URL |"]
    lines.append("| --- | --- | --- | --- |")
    for item in sorted(json.loads(listed), key=lambda i: i["Name"].lower()):
        lines.append(f"| {item['Name']} | {item['Version']} | {item['License']} | {item['URL']} |")
    lines += ["", "## Native libraries bundled in wheels", "", "| wheel | library | licence |", "| --- | --- | --- |"]
    unknown = []
    for package, library, licence in native_libraries(args.python):
        lines.append(f"| {package} | {library} | {licence} |")
        if licence.startswith("unknown"):
            unknown.append(library)
    (out / "LICENCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'sbom.cdx.json'} and {out / 'LICENCES.md'}")
    if unknown:
        print(f"native libraries of unknown licence: {', '.join(unknown)}", file=sys.stderr)


if __name__ == "__main__":
    main()
