# syntax=docker/dockerfile:1
# The fedma operator: kopf + the Kubernetes client, no torch (about 150 MB).
#   docker build -f images/operator.Dockerfile -t ghcr.io/fedma/operator:0.1.0 .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY fedma ./fedma
COPY operator ./operator
# The project itself without its training dependencies, then exactly its "operator" extra,
# read from pyproject.toml and pinned by constraints.txt.
RUN python -m venv /opt/fedma \
 && /opt/fedma/bin/pip install --no-deps . \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['operator']))" > /tmp/operator.txt \
 && /opt/fedma/bin/pip install -c constraints.txt -r /tmp/operator.txt \
 && /opt/fedma/bin/python -c "import fedma_operator.main"

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="fedma-operator" \
      org.opencontainers.image.description="Reconciles FederatedTraining and FederatedRound resources" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 fedma \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fedma
COPY --from=build /opt/fedma /opt/fedma
ENV PATH=/opt/fedma/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 9090 8080
ENTRYPOINT ["fedma-operator"]
CMD ["--all-namespaces"]
