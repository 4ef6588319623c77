"""Sphinx directives that generate reference pages from doctorjob's code, so they cannot drift.

- ``doctorjob-settings``: every key of ``doctorjob.conf.DEFAULTS`` with its default, what the
  system checks accept and the comment that explains it in ``conf.py``.
- ``doctorjob-commands``: every management command of doctorjob (including ones added later),
  with its help and options as ``manage.py NAME --help`` has them, without Django's own options.
- ``doctorjob-check-ids``: fails the build (a warning, under ``-W``) when a system check id in the
  code is not described on the page.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging as sphinx_logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# The options every Django command has: documented by Django, not here.
DJANGO_OPTIONS = {
    "help",
    "version",
    "verbosity",
    "settings",
    "pythonpath",
    "traceback",
    "no_color",
    "force_color",
    "skip_checks",
}
logger = sphinx_logging.getLogger(__name__)
KEY = re.compile(r'\s*"([A-Z_]+)":')
COMMENT = re.compile(r"\s*# ?(.*)")


def inline(text: str) -> list[nodes.Node]:
    """Plain text with `code` spans, without the rest of reST's markup (``*`` is a product here)."""
    parts = re.split(r"`([^`]+)`", text)
    return [nodes.literal(part, part) if i % 2 else nodes.Text(part) for i, part in enumerate(parts) if part]


def setting_comments() -> dict[str, str]:
    """The comment above each key of DEFAULTS; keys without one share the previous key's."""
    from doctorjob import conf

    source = inspect.getsource(conf)
    block = source[source.index("DEFAULTS:") :]
    block = block[: block.index("\n}\n")]
    comments: dict[str, str] = {}
    pending: list[str] = []
    last = ""
    for line in block.splitlines()[1:]:
        if match := KEY.match(line):
            last = " ".join(pending) if pending else last
            comments[match.group(1)] = last
            pending = []
        elif match := COMMENT.match(line):
            pending.append(match.group(1))
    return comments


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An option's help as ``--help`` prints it (``%(default)s`` and the like filled in)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def worker_options() -> dict[str, tuple[str, str]]:
    """The settings ``run_jobs`` has an option for: ``BATCH_SIZE`` -> (``run_jobs --batch-size``, its help)."""
    from django.core.management import load_command_class

    parser = load_command_class("doctorjob", "run_jobs").create_parser("manage.py", "run_jobs")
    return {
        action.dest.upper(): (f"run_jobs {action.option_strings[0]}", help_text(parser, action))
        for action in parser._actions
        if action.option_strings and action.dest not in DJANGO_OPTIONS
    }


class SettingsDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from doctorjob import checks, conf
        from doctorjob.checks import _RULES
        from doctorjob.conf import DEFAULTS

        for module in (checks, conf):
            self.env.note_dependency(str(Path(inspect.getfile(module)).resolve()))
        comments, options = setting_comments(), worker_options()
        table = nodes.definition_list()
        for key, default in DEFAULTS.items():
            body = nodes.definition()
            body += nodes.paragraph("", "", *inline(comments.get(key, "")))
            facts = nodes.bullet_list()
            shown = repr(default).replace("datetime.timedelta", "timedelta")
            facts += nodes.list_item("", nodes.paragraph("", "", nodes.Text("Default: "), nodes.literal(shown, shown)))
            if option := options.get(key):
                flag, explanation = option
                facts += nodes.list_item(
                    "",
                    nodes.paragraph(
                        "", "", nodes.Text("Overridden by "), nodes.literal(flag, flag), nodes.Text(f": {explanation}")
                    ),
                )
            if key in _RULES:
                facts += nodes.list_item("", nodes.paragraph("", f"Accepts: {_RULES[key][1]}."))
            body += facts
            name = f'DOCTORJOB["{key}"]'
            term = nodes.term("", "", nodes.literal(name, name))
            item = nodes.definition_list_item("", term, body)
            item["ids"].append(f"setting-{key.lower().replace('_', '-')}")
            table += item
        return [table]


def escape(text: str) -> str:
    """reST text that renders as ``text``, whatever characters it holds."""
    return re.sub(r"([^\w\s])", r"\\\1", text)


def command_rst(name: str) -> list[str]:
    from django.core.management import load_command_class

    command = load_command_class("doctorjob", name)
    parser = command.create_parser("manage.py", name)
    actions = [a for a in parser._actions if a.dest not in DJANGO_OPTIONS]
    positionals = " ".join(a.metavar or a.dest.upper() for a in actions if not a.option_strings)
    title = f"manage.py {name}"
    lines = [title, "-" * len(title), "", ".. code-block:: text", ""]
    lines += [
        f"   python manage.py {name} {positionals}".rstrip()
        + (" [options]" if any(a.option_strings for a in actions) else ""),
        "",
    ]
    lines += [escape(str(command.help)), "", f".. program:: {name}", ""]
    for action in actions:
        if action.option_strings:
            takes_value = not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            metavar = (action.metavar or action.dest.upper()) if takes_value else ""
            signature = ", ".join(f"{option} {metavar}".strip() for option in action.option_strings)
        else:
            signature = action.metavar or action.dest
        lines += [f".. option:: {signature}", "", f"   {escape(help_text(parser, action))}", ""]
    return lines


class CommandsDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from django.core.management import find_commands

        import doctorjob

        directory = Path(doctorjob.__file__).parent / "management"
        lines: list[str] = []
        for name in sorted(find_commands(str(directory))):
            self.env.note_dependency(str(directory / "commands" / f"{name}.py"))
            lines += command_rst(name)
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="doctorjob management commands"), container)
        return list(container.children)


class LaterGuides(logging.Filter):
    """index.md lists the guides in reading order, then globs ``guides/*`` for the pages added
    later; until one is, the glob matches nothing, which Sphinx warns about with no warning type
    that ``suppress_warnings`` could name. Drop that one warning, for that one pattern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("didn't match any documents" in str(record.msg) and record.args == ("guides/*",))


class CheckIdsDirective(SphinxDirective):
    """Warn (an error under ``-W``) about each system check id doctorjob's code can report that
    the page holding this directive does not mention: a new check cannot go undocumented."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import doctorjob

        package = Path(doctorjob.__file__).parent
        page = Path(self.env.doc2path(self.env.docname)).read_text(encoding="utf-8")
        for path in sorted(package.rglob("*.py")):
            self.env.note_dependency(str(path))
            for check_id in sorted(set(re.findall(r"doctorjob\.[EW]\d{3}", path.read_text(encoding="utf-8")))):
                if f"`{check_id}`" not in page:
                    logger.warning(
                        "%s is reported by %s but not described on this page",
                        check_id,
                        path.relative_to(package.parent),
                        location=(self.env.docname, self.lineno),
                    )
        return []


def setup(app: Sphinx) -> dict[str, Any]:
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(LaterGuides())
    app.add_directive("doctorjob-settings", SettingsDirective)
    app.add_directive("doctorjob-commands", CommandsDirective)
    app.add_directive("doctorjob-check-ids", CheckIdsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
