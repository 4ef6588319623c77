"""Sphinx configuration: the documentation site (``make docs``; warnings are errors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]
# autodoc imports doctorjob, whose models need Django set up; these settings need no database server.
os.environ["DJANGO_SETTINGS_MODULE"] = "docs_settings"
django.setup()

import doctorjob  # noqa: E402  (after django.setup())

project = "doctorjob"
author = "the doctorjob authors"
copyright = "the doctorjob authors"
release = version = doctorjob.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "doctorjob_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
default_role = "literal"  # the docstrings' `name` is code

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # links such as [x](reliability.md#a-sigkill-storm) resolve

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# A user of the API needs the names, not where they are defined.
add_module_names = False

html_theme = "furo"
html_title = f"doctorjob {release}"
html_static_path: list[str] = []
