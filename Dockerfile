# The driver's image. The build stage compiles the venv (pyfuse3 is C code built against libfuse3);
# the final stage holds the Python runtime, fuse3 and that venv only.
# BASE_IMAGE must be Debian bookworm with python3 and its venv module, as both official images are.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Python.h: the official python image ships it under /usr/local; Debian's python3 needs python3-dev.
# Versions are not pinned: the base image's Debian release pins them.
# hadolint ignore=DL3008,SC2086
RUN extra="$(python3 -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_path("include") + "/Python.h") else "python3-dev")')" \
    && apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config $extra \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/oci-volume-csi
COPY pyproject.toml /src/
COPY csi_driver /src/csi_driver
# pip and setuptools only install; the final image runs without them.
RUN /opt/oci-volume-csi/bin/pip install --no-cache-dir /src \
    && /opt/oci-volume-csi/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# fuse3: libfuse3.so.3, which pyfuse3 links against, and fusermount3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/oci-volume-csi /opt/oci-volume-csi
ENV PATH=/opt/oci-volume-csi/bin:$PATH
# Mounting needs root: deploy/daemonset.yaml runs the driver and FUSE containers as uid 0.
# Nothing else does, so the image's own user is not root.
USER 65532:65532
ENTRYPOINT ["oci-volume-csi"]
CMD ["--help"]
