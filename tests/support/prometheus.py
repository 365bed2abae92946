"""Baton's Prometheus endpoint as the tests read it: scraped over HTTP and parsed with
prometheus-client's own parser (shared by test_metrics.py and test_cli_ops.py)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from proxy.sandbox.baton_process import BatonProcess

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(proc: BatonProcess) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {matches}"
    return matches[0]
