"""The Grafana dashboard in deploy/ queries only what ``/metrics`` exports.

Every PromQL query of the dashboard (panels and variables) is checked
against the sample names and labels a real server's ``/metrics`` serves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from metricstream.collector import MetricsCollector
from metricstream.protocol import MessageType, RequestUpdatePayload, make_message
from tests.server.test_prometheus import exporting
from tests.support import scaled

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "metricstream.json"
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"\bmetricstream_[a-zA-Z0-9_:]*")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def queries(node: Any) -> list[str]:
    """Every PromQL query in the dashboard: panel targets' ``expr`` and the
    variables' ``query``/``definition``."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str) and value:
                found.append(value)
            elif key == "query" and isinstance(value, dict) and "query" in value:
                found.append(value["query"])
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


async def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, from a real server after some traffic."""
    async with exporting() as (exporter, base):
        collector = MetricsCollector(exporter, system_stats=False)
        collector.record_request("m", 10, 20, 300.0, status="error", cost=0.01)
        collector.record_request("m", 0, 0, 0.0, status="in_progress", request_id="x")
        collector.record_error("timeout", "timed out", model="m")
        exporter.publish(
            make_message(
                MessageType.REQUEST_UPDATE,
                RequestUpdatePayload(
                    id="s",
                    model="m",
                    created=1.0,
                    prompt_tokens=1,
                    completion_tokens=9,
                    total_tokens=10,
                    latency_ms=90.0,
                    streaming=True,
                    status="success",
                    cost=0.0,
                    time_to_first_token_ms=20.0,
                    inter_token_latency_ms=8.0,
                ),
            )
        )
        await collector.aclose()
        async with httpx.AsyncClient(timeout=scaled(10)) as http:
            text = (await http.get(f"{base}/metrics")).text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


async def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    found = queries(dashboard)
    assert len(found) >= 10  # the panels are there, not an empty file
    available = await exported()
    for query in found:
        bare = _STRING.sub('""', query)
        names = set(_NAME.findall(bare))
        assert names, f"no metricstream metric in {query!r}"
        missing = names - set(available)
        assert not missing, f"{query!r} names {sorted(missing)}, not exported"
        labels = set().union(*(available[name] for name in names))
        used = {label.strip() for group in _BY.findall(bare) for label in group.split(",")}
        used |= set(_MATCHER.findall(query))
        used.discard("")
        assert used <= labels, f"{query!r} uses labels {sorted(used - labels)} not exported"


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
