#!/usr/bin/env python3
"""Writes the Debian copyright file (machine-readable format 1.0) of one major's package.

    copyright.py MAINTAINER YEAR METADATA_JSON < crates

credential_rotate.so statically links Rust crates; Debian policy wants the copyright and
license of everything in the package, so each crate linked into the library gets a paragraph
with its authors and license as Cargo knows them. `crates` is `cargo tree -e
normal,no-proc-macro --prefix none --format '{p}'` for the major's feature (name vN.N.N per
line), METADATA_JSON the output of `cargo metadata --format-version 1`. The license texts are
in packaging/debian/licenses, beside this script; a crate under a license that file lacks
stops the build instead of shipping an incomplete copyright file.
"""

import json
import re
import sys
from pathlib import Path


def dnf(expr):
    """An SPDX expression as a list of alternatives, each a list of licenses that all apply:
    DEP-5 knows `and`/`or` but no parentheses."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def parse_or():
        nonlocal pos
        alts = parse_and()
        while pos < len(tokens) and tokens[pos].upper() == "OR":
            pos += 1
            alts = alts + parse_and()
        return alts

    def parse_and():
        nonlocal pos
        alts = parse_atom()
        while pos < len(tokens) and tokens[pos].upper() == "AND":
            pos += 1
            right = parse_atom()
            alts = [a + b for a in alts for b in right]
        return alts

    def parse_atom():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "(":
            alts = parse_or()
            pos += 1  # the closing parenthesis
            return alts
        return [[token]]

    result = parse_or()
    if pos != len(tokens):
        raise ValueError(f"cannot read the license expression {expr!r}")
    return result


def main():
    maintainer, year, metadata_path = sys.argv[1:4]
    here = Path(__file__).resolve().parent
    licenses_text = (here / "licenses").read_text(encoding="utf-8")
    known = set(re.findall(r"^License: (\S+)$", licenses_text, re.MULTILINE))
    metadata = json.loads(Path(metadata_path).read_text(encoding="utf-8"))
    packages = {(p["name"], p["version"]): p for p in metadata["packages"]}

    crates = set()
    for line in sys.stdin:
        match = re.match(r"^(\S+) v(\S+)", line)
        if match:
            crates.add((match.group(1), match.group(2)))

    out = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: credential_rotate\n"
        f"Upstream-Contact: {maintainer}\n"
        "Comment: credential_rotate.so is built with cargo and statically links the Rust\n"
        " crates from crates.io listed below as cargo-registry/<crate>-<version>, each under\n"
        " the license its authors chose (where they offer a choice, any one applies), and\n"
        " inline functions of the PostgreSQL server headers (postgresql-server-headers/*).\n"
        "\n"
        "Files: *\n"
        f"Copyright: {year} {maintainer}\n"
        "License: Apache-2.0\n",
        # pgrx-pg-sys compiles a C shim against the server's headers, whose inline functions
        # end up in the library.
        "Files: postgresql-server-headers/*\n"
        "Copyright: Portions Copyright (c) 1996-2025, PostgreSQL Global Development Group\n"
        "           Portions Copyright (c) 1994, The Regents of the University of California\n"
        "License: PostgreSQL\n",
    ]
    missing = set()
    for name, version in sorted(crates):
        if name == "credential_rotate":
            continue
        package = packages.get((name, version))
        if package is None:
            raise SystemExit(f"copyright.py: {name} {version} is not in cargo metadata")
        expr = package.get("license") or ""
        if not expr:
            raise SystemExit(f"copyright.py: {name} {version} declares no license")
        alternatives = dnf(expr)
        missing |= {lic for alt in alternatives for lic in alt} - known
        authors = [re.sub(r"\s+", " ", a).strip() for a in package.get("authors") or []]
        holders = authors or [f"the {name} developers"]
        out.append(
            f"Files: cargo-registry/{name}-{version}/*\n"
            "Copyright: " + "\n           ".join(holders) + "\n"
            "License: " + " or ".join(" and ".join(alt) for alt in alternatives) + "\n"
        )
    if missing:
        raise SystemExit(
            "copyright.py: no text in packaging/debian/licenses for " + ", ".join(sorted(missing))
        )
    out.append(licenses_text)
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
