"""Deployment tooling: cluster manifests generated from serve_config.yaml (see docs/deploy.md)."""
