"""Check the Prefect UI with headless Chromium: the deployments, a completed run, its artifacts.

    python deployments/ui_check.py [--ui-url http://127.0.0.1:4200] [--deployment on-demand]
                                   [--out demo-output/ui-check]

Needs a served UI (`make serve`) with at least one completed run of the deployment (click Run
in the UI, or `prefect deployment run enrich-documents/on-demand`). For each page it saves a
screenshot and the rendered text under --out, and checks the text for what must be there.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLOW_NAME = "enrich-documents"
ARTIFACT_KEYS = ("enrich-report", "enrich-progress")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1440,1000",
]  # fmt: skip


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


def chromium(binary: str, profile: Path, budget_ms: int, *args: str) -> str:
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result.stdout


def check_page(
    binary: str, profile: Path, out: Path, name: str, url: str, expected: Sequence[str]
) -> bool:
    """Render `url`, save its screenshot and text, and report which `expected` strings show."""
    missing: list[str] = list(expected)
    for budget_ms in (15_000, 40_000):  # a slow first load gets a second, longer chance
        text = page_text(chromium(binary, profile, budget_ms, "--dump-dom", url))
        missing = [item for item in expected if item not in text]
        if not missing:
            break
    (out / f"{name}.txt").write_text(text + "\n")
    chromium(binary, profile, 15_000, f"--screenshot={out / f'{name}.png'}", url)
    status = "ok  " if not missing else "FAIL"
    print(f"{status} {name}: {url}")
    print(f"     screenshot {out / f'{name}.png'}; expected {list(expected)}", end="")
    print(f"; missing {missing}" if missing else "")
    return not missing


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
            "run-form",
            f"{ui_url}/deployments/deployment/{deployment['id']}/run",
            ["source", "destination", "enrichments", "batch_api"],
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
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-") as profile:
        results = [
            check_page(args.chromium, Path(profile), args.out, name, url, expected)
            for name, url, expected in pages
        ]
    passed = all(results) and all(key in by_key for key in ARTIFACT_KEYS)
    print(f"{'PASS' if passed else 'FAIL'}: run {run['name']} of {FLOW_NAME}/{args.deployment}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
