#!/usr/bin/env python3
"""Fails when a file under version control refers to a path above the repository root.

A fresh clone must pass the test suite wherever it is placed, so nothing tracked may read
a sibling directory of the checkout (such as a shared folder) or any `../..` chain that climbs out of the repository. Every run of `../`
segments found in a tracked text file is resolved from, for Rust sources, the file's crate
root (the nearest directory with a Cargo.toml, the base of `env!("CARGO_MANIFEST_DIR")`) and,
for anything else, the file's own directory; the file fails the check when that escapes the
root.
"""
import os
import re
import subprocess
import sys

root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                      check=True).stdout.strip()
files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                       check=True).stdout.split("\0")

SKIP_SUFFIXES = (".md", ".lock", ".jsonl", ".png")


# Spelled in two parts so that this file does not name the path it looks for.
SIBLING_SHARED = "../" + "shared"


def base_dir(rel):
    if not rel.endswith(".rs"):
        return os.path.dirname(rel)  # scripts and configs resolve from their own directory
    d = os.path.dirname(rel)
    while True:
        if os.path.isfile(os.path.join(root, d, "Cargo.toml")):
            return d
        if not d:
            return os.path.dirname(rel)
        d = os.path.dirname(d)


def depth(rel_dir):
    return len([p for p in rel_dir.split("/") if p])


bad = []
for rel in files:
    if not rel or rel.endswith(SKIP_SUFFIXES) or rel == "scripts/check-self-contained.py":
        continue
    try:
        text = open(os.path.join(root, rel), encoding="utf-8").read()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        continue
    base = depth(base_dir(rel))
    for n, line in enumerate(text.splitlines(), 1):
        if SIBLING_SHARED in line:
            bad.append(f"{rel}:{n}: {line.strip()}")
            continue
        for m in re.finditer(r"(?:\.\./)+\.?\.?", line):
            ups = m.group(0).count("..")
            if ups > base:
                bad.append(f"{rel}:{n}: climbs {ups} levels from {base} deep: {line.strip()}")
                break

if bad:
    print("files under version control refer to paths outside the repository:", file=sys.stderr)
    for b in bad:
        print("  " + b, file=sys.stderr)
    sys.exit(1)
print("self-contained: no tracked file refers to a path above the repository root")
