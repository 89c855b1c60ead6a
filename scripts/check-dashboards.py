#!/usr/bin/env python3
"""Checks for scripts/ci-ecosystem: docs/grafana-dashboard.json, the alert rules and the compose
files parse, and every shipper_* series that the dashboard and the rules query is served in the
/metrics text given as the only argument (histogram _bucket/_sum/_count resolve to their base).
Per-site task series are reported, not failed, while the probe is not wired into the shipper."""
import json
import os
import re
import sys

import yaml

# Files are named from the repository root, found from this script, so any directory works.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SITE = {"shipper_tasks_live", "shipper_tasks_spawned_total", "shipper_tasks_terminated_total"}


def served_names(path):
    names = set()
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def main():
    served = served_names(sys.argv[1])
    with open(os.path.join(ROOT, "docs/grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    if not exprs:
        sys.exit("docs/grafana-dashboard.json has no queries")
    with open(os.path.join(ROOT, "docs/prometheus-rules.yml")) as f:
        rules = yaml.safe_load(f)
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for name in ["docker-compose.yml", "docs/compose/grafana-datasources.yml",
                 "docs/compose/grafana-dashboards.yml"]:
        with open(os.path.join(ROOT, name)) as f:
            yaml.safe_load(f)

    missing = set()
    for expr in exprs:
        for name in re.findall(r"\bshipper_[a-z_]+\b", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in served and base not in served and name not in PER_SITE:
                missing.add(name)
    unwired = sorted(n for n in PER_SITE if n not in served)
    if unwired:
        print("note: not served yet (the probe is not wired into this shipper):", ", ".join(unwired))
    if missing:
        sys.exit("queried but not served by the live shipper: " + ", ".join(sorted(missing)))
    print(f"{len(exprs)} queries parse; every shipper_* series they use is served")


if __name__ == "__main__":
    main()
