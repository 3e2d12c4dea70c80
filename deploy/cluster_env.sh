#!/usr/bin/env bash
# Write the secrets file that `ray up cluster.yaml` mounts on every node, from this shell's environment:
#   COLORIZE_DATABASE_URL=postgresql+psycopg://... MINIO_ACCESS_KEY=... deploy/cluster_env.sh [OUT]
# The values never enter the repository: OUT defaults to ~/.config/colorize/cluster.env (mode 600),
# the local path of cluster.yaml's file_mounts; the start commands source it before `ray start`.
set -euo pipefail

out="${1:-$HOME/.config/colorize/cluster.env}"
required=(COLORIZE_DATABASE_URL COLORIZE_PUBLIC_BASE_URL)  # one shared ledger (PostgreSQL); the address clients use
optional=(MINIO_ACCESS_KEY MINIO_SECRET_KEY MODEL_STORE_ACCESS_KEY MODEL_STORE_SECRET_KEY HF_TOKEN)

for name in "${required[@]}"; do
    if [[ -z "${!name:-}" ]]; then
        echo "error: set $name in this shell first (see docs/deploy.md)" >&2
        exit 2
    fi
done

umask 077
mkdir -p "$(dirname "$out")"
{
    for name in "${required[@]}" "${optional[@]}"; do
        if [[ -n "${!name:-}" ]]; then
            printf 'export %s=%q\n' "$name" "${!name}"  # %q: safe to source whatever the value holds
        fi
    done
} > "$out"
chmod 600 "$out"
echo "wrote $out ($(grep -c . "$out") variables)" >&2
