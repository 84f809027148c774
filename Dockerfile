# syntax=docker/dockerfile:1
# wagate gateway image: built with the official Rust image, run on Debian slim
# as an unprivileged user (uid 10001) with its state on the /data volume.
#   docker build -t wagate .
#   docker run -p 50051:50051 -v wagate-data:/data -e WAGATE_API_KEYS=... wagate

FROM rust:1.95-slim-bookworm AS build
# make: jemalloc, the binary's allocator, is built from source by its crate.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build outputs between builds; the
# binaries are copied out of the cached target dir in the same step. The
# `dist` profile (Cargo.toml) is `release` with whole-program optimisation
# and no debug info: smaller code, and less of it resident.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p wagate -p wagatectl \
    && install -D -m 0755 target/dist/wagate /out/wagate \
    && install -D -m 0755 target/dist/wagatectl /out/wagatectl

FROM debian:bookworm-slim
# ca-certificates: trust roots for outgoing TLS connections. Pinned to the
# bookworm version; bump it when Debian ships an update.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 wagate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin wagate \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=build /out/wagate /out/wagatectl /usr/local/bin/
# Listen on every interface inside the container; API keys are required for
# a non-loopback address, so the gateway refuses to start without
# WAGATE_API_KEYS.
ENV WAGATE_LISTEN=0.0.0.0:50051 \
    WAGATE_DATA_DIR=/data \
    WAGATE_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 50051
USER 10001:10001
ENTRYPOINT ["wagate", "serve"]
