# outbox-relay container image: build on Debian 12, run on Debian 12 slim as a non-root user.
#
#   buildah bud -t outbox-relay .        # or: podman build / docker build
#   integration/deploy/build-image.sh    # the same without a registry (base images made with debootstrap)
#
# The relay needs librdkafka >= 2.6.1 (SCRAM with Kafka 4); Debian 12 ships 2.0.2, so the build
# stage builds Debian 13's source package with integration/env/librdkafka.sh, exactly as the
# development machines do, and the runtime stage installs the resulting librdkafka1 .deb.

# ------------------------------------------------------------------------------------- build
FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
# libcpp-httplib-dev and libcli11-dev: the HTTP endpoint and the command-line parser.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config ca-certificates \
      libpqxx-dev libpq-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev \
      libcpp-httplib-dev libcli11-dev
# librdkafka first: it changes less often than the relay's sources, so its layer is reused.
COPY integration/env/common.sh integration/env/librdkafka.sh /src/integration/env/
RUN OUTBOX_RELAY_CACHE=/opt/debs /src/integration/env/librdkafka.sh \
 && cp /opt/debs/librdkafka-*/librdkafka1_*.deb /opt/librdkafka1.deb
COPY CMakeLists.txt /src/
COPY cmake /src/cmake
COPY schema /src/schema
COPY relay /src/relay
# VERSION (build-image.sh passes integration/deploy/version.sh's): the binary must say the same.
ARG VERSION=""
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DOUTBOX_BUILD_TESTS=OFF \
 && cmake --build /build -j"$(nproc)" \
 && strip /build/outbox-relay \
 && /build/outbox-relay --version \
 && { [ -z "$VERSION" ] || [ "$(/build/outbox-relay --version)" = "outbox-relay $VERSION" ]; }

# ----------------------------------------------------------------------------------- runtime
FROM debian:12-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
ARG VERSION=""
LABEL org.opencontainers.image.title="outbox-relay" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0"
# The shared libraries the binary loads, nothing else. integration/deploy/rootfs.sh reads this
# list (one package per line, between the quotes) to build the test root filesystem, and
# integration/tests/test_image.py fails when a library the binary needs is missing from it.
ARG RUNTIME_PACKAGES="\
    ca-certificates \
    libstdc++6 \
    libpq5 \
    libpqxx-6.4 \
    libyaml-cpp0.7 \
    libspdlog1.10 \
    libfmt9 \
    libcpp-httplib0.11 \
    "
COPY --from=build /opt/librdkafka1.deb /tmp/librdkafka1.deb
RUN apt-get update \
 && apt-get install -y --no-install-recommends $RUNTIME_PACKAGES /tmp/librdkafka1.deb \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/librdkafka1.deb \
 && mkdir -p /etc/outbox-relay \
 && groupadd --gid 10001 outbox-relay \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin outbox-relay
COPY --from=build /build/outbox-relay /usr/local/bin/outbox-relay
COPY relay/config/example.yaml /etc/outbox-relay/config.yaml
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# /metrics, /healthz, /readyz (http.port)
EXPOSE 8080
ENTRYPOINT ["outbox-relay"]
CMD ["run", "--config", "/etc/outbox-relay/config.yaml"]
