# The service on Ray's GPU image: the same image for `ray up cluster.yaml` (docker.image) and KubeRay.
#   docker build -t REGISTRY/colorize-service:0.1.0 .
#   docker run --gpus all --shm-size=8g -p 8000:8000 REGISTRY/colorize-service:0.1.0   # one box
# The tag is pinned to the ray of pyproject.toml (tests/unit/test_cluster_config.py checks it);
# rayproject/ray-ml is discontinued, so the ML stack comes from pyproject.toml instead.
FROM rayproject/ray:2.60.0-py311-gpu

# Relative paths in serve configs (data/storage, data/model-cache, the SQLite ledger) resolve here,
# whichever process builds the app. No secrets here: they come from the environment at run time.
ENV COLORIZE_BASE_DIR=/home/ray/colorize \
    PYTHONDONTWRITEBYTECODE=1
# Made by the base image's user `ray` (the classic builder's WORKDIR would make it root's), so the
# editable install and the service can write there.
RUN mkdir -p /home/ray/colorize/data
WORKDIR /home/ray/colorize

# Dependencies first, read from pyproject.toml itself, so editing code does not re-download torch.
# facenet-pytorch is only a carrier of MTCNN weights; its pins (torch<2.3, ...) are for code never imported.
COPY --chown=ray:users pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0 \
    && rm /tmp/requirements.txt

# Editable, so /home/ray/colorize is the code: `ray up` bind-mounts a synced checkout over it.
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users service ./service
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users storage ./storage
COPY --chown=ray:users auth ./auth
COPY --chown=ray:users colorize_client ./colorize_client
COPY --chown=ray:users workbench ./workbench
COPY --chown=ray:users serve_config.yaml serve_config.demo.yaml ./
RUN pip install --no-cache-dir --no-deps -e .

# The base image's unprivileged user `ray` (uid 1000, group users), numeric so that Kubernetes'
# runAsNonRoot can verify it; never root at run time.
USER 1000:100
EXPOSE 6379 8265 8000
# One box without Ray cluster tooling; `ray up` and KubeRay run their own `ray start` instead.
CMD ["python", "-m", "deployments.launch", "serve_config.yaml", "--host", "0.0.0.0"]
