#!/usr/bin/env python3
"""Renders the templates of runtime/tests/chat_compat/*.jinja the way
transformers' apply_chat_template does (its _compile_jinja_template: an
ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loopcontrols,
its tojson, raise_exception and strftime_now), for the conversations in
runtime/tests/chat_compat/cases.json and the whole requests listed in
REQUESTS, and prints the expected renders as JSON.
Only Jinja2 is needed (pip install jinja2).

    python3 runtime/tests/chat_reference.py > runtime/tests/chat_compat/expected.json

strftime_now is pinned to 2024-07-26 09:05:07 UTC, as the Rust test pins it.
cases.json keeps object keys sorted: the Rust side reads it into serde_json
maps, which iterate in key order (see ChatTemplate::render_json).
"""
import json
import sys
import time
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED = 1721952000 + 9 * 3600 + 5 * 60 + 7
HERE = Path(__file__).parent / "chat_compat"


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return time.strftime(fmt, time.gmtime(FIXED))


class Generation(Extension):
    """transformers' AssistantTracker, untracked: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_support"), [], [], body).set_lineno(lineno)

    def _support(self, caller):
        return caller()


def env():
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = strftime_now
    return e


# Whole requests (apply_chat_template's keyword arguments as one JSON object,
# key order kept), rendered with a template.
REQUESTS = [("tools_request.json", "tools_header.jinja")]


def main():
    cases = json.loads((HERE / "cases.json").read_text())
    out = []
    for case in cases:
        src = (HERE / case["template"]).read_text()
        kwargs = dict(tools=None, documents=None)
        kwargs.update(bos_token=case["bos_token"], eos_token=case["eos_token"])
        kwargs.update(case.get("extra", {}))
        try:
            rendered = env().from_string(src).render(
                messages=case["messages"], add_generation_prompt=case["add_generation_prompt"], **kwargs
            )
            out.append({"name": case["name"], "rendered": rendered})
        except jinja2.exceptions.TemplateError as e:
            out.append({"name": case["name"], "error": str(e)})
    requests = []
    for file, template in REQUESTS:
        kwargs = dict(tools=None, documents=None)
        kwargs.update(json.loads((HERE / file).read_text()))
        rendered = env().from_string((HERE / template).read_text()).render(**kwargs)
        requests.append({"file": file, "template": template, "rendered": rendered})
    json.dump({"cases": out, "requests": requests}, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
