"""Check the Prefect UI with headless Chromium: the deployments, a completed run, its artifacts.

    python deployments/ui_check.py [--ui-url http://127.0.0.1:4200] [--deployment on-demand]
                                   [--out demo-output/ui-check]

Needs a served UI (`make serve`) with at least one completed run of the deployment (click Run
in the UI, or `prefect deployment run enrich-documents/on-demand`). For each page it saves a
screenshot and the rendered text under --out, and checks the text for what must be there. The
custom-run form is checked field by field against the deployment's parameter schema: every
parameter is an input with its description, each enrichment is a set of fields (no raw JSON
editor but for a dict such as `entities`), and no optional value shows an "int | None" toggle.
Every scheduled deployment's page must name its schedules' time zones.
Standard library only; exits non-zero when a check fails or Chromium is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLOW_NAME = "enrich-documents"
ARTIFACT_KEYS = ("enrich-report", "enrich-progress")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip
WINDOW = "--window-size=1440,1000"
TALL_WINDOW = "--window-size=1440,4000"  # the whole run form in one screenshot


def api(ui_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{ui_url}/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def chromium(binary: str, profile: Path, budget_ms: int, *args: str, window: str = WINDOW) -> str:
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, window, f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result.stdout


def check_page(
    binary: str,
    profile: Path,
    out: Path,
    name: str,
    url: str,
    expected: Sequence[str],
    window: str = WINDOW,
) -> tuple[bool, str]:
    """Render `url`, save its screenshot and text, and report which `expected` strings show.

    Returns whether all showed, and the rendered DOM."""
    missing: list[str] = list(expected)
    dom = ""
    for budget_ms in (15_000, 40_000):  # a slow first load gets a second, longer chance
        dom = chromium(binary, profile, budget_ms, "--dump-dom", url, window=window)
        text = page_text(dom)
        missing = [item for item in expected if item not in text]
        if not missing:
            break
    (out / f"{name}.txt").write_text(text + "\n")
    chromium(binary, profile, 15_000, f"--screenshot={out / f'{name}.png'}", url, window=window)
    status = "ok  " if not missing else "FAIL"
    print(f"{status} {name}: {url}")
    print(f"     screenshot {out / f'{name}.png'}; expected {list(expected)}", end="")
    print(f"; missing {missing}" if missing else "")
    return not missing, dom


# ---------------------------------------------------------------------------- the run form


@dataclass
class FormField:
    """One labelled property of the UI's schema form, as rendered."""

    label: str = ""
    description: str = ""
    inputs: set[str] = field(default_factory=set)  # the input kinds it holds directly
    options: list[str] = field(default_factory=list)  # a button group: a type toggle
    children: list[FormField] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.label.removesuffix(" (Optional)").strip()

    def walk(self) -> Iterator[FormField]:
        for child in self.children:
            yield child
            yield from child.walk()

    def find(self, title: str) -> list[FormField]:
        return [f for f in self.walk() if f.title == title]


# Classes of the inputs the UI's schema form renders (prefect-ui-library).
INPUT_KINDS = {
    "schema-form-property-string": "text",
    "schema-form-property-integer": "integer",
    "p-number-input": "number",
    "p-select": "choice",
    "p-toggle": "toggle",
    "schema-form-property-object": "object",
    "schema-form-property-array": "list",
    "schema-form-property-kind-json": "json",
}


class FormParser(HTMLParser):
    """The tree of form fields of a rendered schema form."""

    def __init__(self) -> None:
        super().__init__()
        self.root = FormField()
        self._fields: list[tuple[FormField, int]] = [(self.root, 0)]
        self._depth = 0  # open <div>s
        self._text_target: tuple[str, int] | None = None  # ("label"|"description"|"option", depth)

    @property
    def _current(self) -> FormField:
        return self._fields[-1][0]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if tag == "div":
            self._depth += 1
            if "schema-form-property" in classes:
                field_ = FormField()
                self._current.children.append(field_)
                self._fields.append((field_, self._depth))
            elif "schema-form-property__description" in classes:
                self._text_target = ("description", self._depth)
        if tag == "span" and "schema-form-property__label" in classes:
            self._text_target = ("label", -1)
        if tag == "button" and "p-button-group__button" in classes:
            self._current.options.append("")
            self._text_target = ("option", -2)
        for css, kind in INPUT_KINDS.items():
            if css in classes:
                self._current.inputs.add(kind)

    def handle_endtag(self, tag: str) -> None:
        target = self._text_target
        if tag == "span" and target and target[1] == -1:
            self._text_target = None
        if tag == "button" and target and target[1] == -2:
            self._text_target = None
        if tag == "div":
            if target and target[1] == self._depth:
                self._text_target = None
            if len(self._fields) > 1 and self._fields[-1][1] == self._depth:
                self._fields.pop()
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._text_target:
            return
        current, text = self._current, " ".join(data.split())
        if not text:
            return
        kind = self._text_target[0]
        if kind == "label":
            current.label = f"{current.label} {text}".strip()
        elif kind == "description":
            current.description = f"{current.description} {text}".strip()
        else:
            current.options[-1] = f"{current.options[-1]} {text}".strip()


def parse_form(dom: str) -> FormField:
    parser = FormParser()
    parser.feed(dom)
    return parser.root


def _definition(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema.get("definitions", {}).get(ref.rsplit("/", 1)[1], {}) if ref else node


def check_run_form(
    form: FormField, schema: dict[str, Any], parameters: dict[str, Any]
) -> list[str]:
    """What is wrong with the rendered run form, given the deployment's schema and values."""
    problems: list[str] = []
    top = {f.title: f for f in form.children}
    for name, prop in schema.get("properties", {}).items():
        shown = top.get(prop.get("title", name))
        if shown is None:
            problems.append(f"parameter {name!r} has no field")
        elif not prop.get("description"):
            problems.append(f"parameter {name!r} has no description in its schema")
        elif " ".join(prop["description"].split()) != shown.description:
            problems.append(f"parameter {name!r} does not show its description")
    for found in form.walk():
        if "None" in found.options:
            problems.append(f"field {found.title!r} shows a None toggle {found.options}")
    enrichments = top.get("enrichments")
    if enrichments is None:
        return problems
    by_model = next(
        (
            _definition(schema, option)
            for option in schema["properties"]["enrichments"].get("anyOf", [])
            if _definition(schema, option).get("type") == "object"
        ),
        None,
    )
    if by_model is None:
        return [*problems, "enrichments has no form (one list per model) in its schema"]
    values = parameters.get("enrichments")
    if not isinstance(values, dict):
        return [*problems, "the deployment's enrichments are not given one list per model"]
    for model, prop in by_model.get("properties", {}).items():
        shown = enrichments.find(prop.get("title", model))
        if not shown:
            problems.append(f"enrichments has no {model!r} list")
            continue
        item = _definition(schema, prop.get("items", {}))
        expected = {p.get("title", n) for n, p in item.get("properties", {}).items()}
        fields = {f.title for f in shown[0].walk()}
        if values.get(model) and not expected <= fields:
            problems.append(f"{model} items show {sorted(fields)}, not {sorted(expected)}")
    # A raw JSON editor is right only for a free-form dict (such as extract's `entities`).
    dicts = {
        p.get("title", n)
        for d in schema.get("definitions", {}).values()
        for n, p in d.get("properties", {}).items()
        if p.get("type") == "object" and "properties" not in p
    }
    raw = sorted({f.title for f in enrichments.walk() if "json" in f.inputs} - dicts)
    if raw or "json" in enrichments.inputs:
        problems.append(f"enrichment fields shown as raw JSON: {raw or ['enrichments']}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui-url", default="http://127.0.0.1:4200")
    parser.add_argument("--deployment", default="on-demand")
    parser.add_argument("--out", type=Path, default=Path("demo-output/ui-check"))
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    ui_url = args.ui_url.rstrip("/")
    if not Path(args.chromium).exists():
        print(
            f"{args.chromium} not found. Install Debian's Chromium first:\n"
            "    sudo apt-get update && sudo apt-get install -y chromium",
            file=sys.stderr,
        )
        return 2
    try:
        deployment = api(ui_url, f"/deployments/name/{FLOW_NAME}/{args.deployment}")
        runs = api(
            ui_url,
            "/flow_runs/filter",
            {
                "flow_runs": {
                    "deployment_id": {"any_": [deployment["id"]]},
                    "state": {"type": {"any_": ["COMPLETED"]}},
                },
                "sort": "START_TIME_DESC",
                "limit": 1,
            },
        )
    except OSError as exc:
        print(f"cannot read {ui_url}/api ({exc}); is `make serve` running?", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"no completed run of {FLOW_NAME}/{args.deployment} yet: click Run in the UI or "
            f"`PREFECT_API_URL={ui_url}/api prefect deployment run "
            f"{FLOW_NAME}/{args.deployment}`, wait for Completed, then run this again",
            file=sys.stderr,
        )
        return 1
    run = runs[0]
    artifacts = api(
        ui_url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    )
    by_key = {artifact["key"]: artifact for artifact in artifacts if artifact.get("key")}
    args.out.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str, list[str]]] = [
        ("deployments", f"{ui_url}/deployments", [FLOW_NAME, args.deployment]),
        (
            "deployment",
            f"{ui_url}/deployments/deployment/{deployment['id']}",
            [args.deployment, FLOW_NAME],
        ),
        (
            "flow-run",
            f"{ui_url}/runs/flow-run/{run['id']}?tab=Details",
            [run["name"], "Completed", args.deployment, FLOW_NAME],
        ),
        ("artifacts", f"{ui_url}/artifacts", list(ARTIFACT_KEYS)),
    ]
    for key in ARTIFACT_KEYS:
        if key in by_key:
            url = f"{ui_url}/artifacts/artifact/{by_key[key]['id']}"
            pages.append((f"artifact-{key}", url, [key, run["name"]]))
        else:
            print(f"FAIL run {run['name']} has no artifact {key!r}")
    # Each scheduled deployment of the flow names its schedules' time zones where they show.
    flow_deployments = api(
        ui_url, "/deployments/filter", {"flows": {"name": {"any_": [FLOW_NAME]}}}
    )
    for other in flow_deployments:
        zones = sorted(
            {
                s["schedule"]["timezone"]
                for s in other.get("schedules") or []
                if s.get("schedule", {}).get("timezone")
            }
        )
        if zones:
            pages.append(
                (
                    f"schedule-{other['name']}",
                    f"{ui_url}/deployments/deployment/{other['id']}",
                    [other["name"], *zones],
                )
            )
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-") as profile:
        results = [
            check_page(args.chromium, Path(profile), args.out, name, url, expected)[0]
            for name, url, expected in pages
        ]
        form_url = f"{ui_url}/deployments/deployment/{deployment['id']}/run"
        shown, dom = check_page(
            args.chromium,
            Path(profile),
            args.out,
            "run-form",
            form_url,
            ["source", "destination", "enrichments", "batch_api"],
            window=TALL_WINDOW,
        )
        problems = check_run_form(
            parse_form(dom), deployment["parameter_openapi_schema"], deployment["parameters"]
        )
        for problem in problems:
            print(f"FAIL run-form: {problem}")
        if not problems:
            print("ok   run-form fields: every parameter with its description, typed enrichments")
        results.append(shown and not problems)
    passed = all(results) and all(key in by_key for key in ARTIFACT_KEYS)
    print(f"{'PASS' if passed else 'FAIL'}: run {run['name']} of {FLOW_NAME}/{args.deployment}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
