"""Deployments of the enrich-documents flow.

`prefect.yaml` declares them (schedules, parameters, work pool); `serve.py` serves the same
definitions against a local Prefect server and emulator (`make serve`); `ui_check.py` checks the
UI with headless Chromium.
"""
