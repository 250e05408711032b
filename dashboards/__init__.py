"""StreamGuard's Grafana dashboards, generated from Python: see ``dashboards/generate.py``."""
