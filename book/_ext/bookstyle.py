"""The book's local Sphinx extension (_config.yml, `sphinx: local_extensions`).

1. References in one author-year style. pybtex labels the reference list `alpha` by
   default ("[HJA20]") while the citations were author-year. This registers, under the
   name `author_year_book`:
   - a pybtex label style: "Ho, 2020", "Salimans and Ho, 2022", "Ho et al., 2020", with
     a, b, ... when two entries would share a label ("Song et al., 2021a");
   - a pybtex formatting style: pybtex's `unsrt` entries with those labels, sorted by
     author, year and title (`bibtex_default_style`);
   - a sphinxcontrib-bibtex reference style: citations show the same labels, several
     in one citation separated by "; " (`bibtex_reference_style`).
   Text and list therefore always agree.
2. Pages with widgets, two fixes for the Jupyter widget manager that myst-nb loads:
   - it typesets widget labels with MathJax 2's `MathJax.Hub.Queue`, but the page runs
     MathJax 3, so every widget threw "Cannot read properties of undefined (reading
     'Queue')": a shim maps `Hub.Queue` to MathJax 3's `typesetPromise`;
   - its icon fonts were requested relative to the page (404) because require.js did
     not know where the manager came from: a require.js `paths` entry tells it.
3. sphinx-thebe adds its inline configuration script twice on every page ("Identifier
   'THEBE_JS_URL' has already been declared"): duplicate scripts are dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pybtex.plugin
import sphinxcontrib.bibtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.label import LabelReferenceStyle

STYLE = "author_year_book"


def _last_names(persons) -> list[str]:
    fmt = pybtex.plugin.find_plugin("pybtex.style.names", "last")()
    return [fmt.format(p, True).format().render_as("text") for p in persons]


def author_year_label(entry) -> str:
    """The author-year label: "Name, 2020", "A and B, 2020" or "A et al., 2020"."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = _last_names(persons)
    if not names:
        who = Text.from_latex(entry.fields.get("title", "Anonymous")).render_as("text")
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year_label(e) for e in entries]
        count = {lab: labels.count(lab) for lab in labels}
        seen: dict[str, int] = {}
        for lab in labels:
            if count[lab] > 1:
                k = seen.get(lab, 0)
                seen[lab] = k + 1
                yield lab + "abcdefghijklmnopqrstuvwxyz"[k]
            else:
                yield lab


class AuthorYearStyle(UnsrtStyle):
    default_label_style = STYLE
    default_sorting_style = "author_year_title"


def _brackets() -> BracketStyle:
    return BracketStyle(sep="; ")


@dataclass
class AuthorYearLabelReferenceStyle(LabelReferenceStyle):
    """Citations show the reference list's labels, several separated by "; "."""

    bracket_textual: BracketStyle = field(default_factory=_brackets)
    bracket_parenthetical: BracketStyle = field(default_factory=_brackets)
    bracket_label: BracketStyle = field(default_factory=_brackets)


# MathJax 2's Hub.Queue(["Typeset", Hub, element]) on MathJax 3
_MATHJAX_SHIM = """document.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (!mj || mj.Hub || !mj.typesetPromise) return;
  mj.Hub = {Queue: function (job) {
    var el = Array.isArray(job) ? job[2] : undefined;
    mj.startup.promise.then(function () {
      return mj.typesetPromise(el ? [el] : undefined);
    }).catch(function (err) { console.error("MathJax typeset of a widget:", err); });
  }};
});"""


def _script_key(js):
    return (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))


def page_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    manager = next((js.filename for js in scripts if js.filename
                    and re.search(r"/html-manager@[^/]+/", js.filename)), None)
    if manager:
        base = manager[:manager.index("/dist/")]
        # read by require.js when it loads (a global `require` object is its config)
        config = {"paths": {"@jupyter-widgets/html-manager": base}}
        app.add_js_file(None, body=f"var require = {json.dumps(config)};", priority=490)
        app.add_js_file(None, body=_MATHJAX_SHIM, priority=490)
    seen, unique = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app):
    pybtex.plugin.register_plugin("pybtex.style.labels", STYLE, AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle)
    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", STYLE, AuthorYearLabelReferenceStyle)
    app.connect("html-page-context", page_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
