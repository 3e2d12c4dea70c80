"""Deployment tooling: cluster manifests generated from serve_config.yaml (see README "Deploy")."""
