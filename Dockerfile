# syntax=docker/dockerfile:1
#
# Dockerfile: builds the gatehouse binary and ships it in a small non-root runtime image.
#
#   docker build -t gatehouse .
#   docker run -v $PWD/gatehouse.toml:/etc/gatehouse/gatehouse.toml:ro \
#              -v $PWD/certs:/etc/gatehouse/certs:ro -p 8443:8443 gatehouse
#
# Nothing secret is copied in: configuration, certificates and keys are mounted at run time
# (see docker-compose.yml), and .dockerignore keeps target/, .git/, .env and keys out of the
# build context.

# ---- build ----------------------------------------------------------------------------
# Official Rust image on Debian bookworm, so the binary links against the same glibc as the
# runtime stage below. Edition 2024 needs Rust 1.85 or later.
FROM rust:1.95-bookworm AS builder
WORKDIR /build

COPY Cargo.toml Cargo.lock ./
COPY src ./src

# BuildKit cache mounts keep the registry and target directory between builds; the binary
# is copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin gatehouse \
    && install -D -m 0755 target/release/gatehouse /out/gatehouse

# ---- runtime --------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# System CA roots: https:// upstreams (such as Lightstep) are verified against them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gatehouse \
    && useradd --system --uid 10001 --gid gatehouse --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gatehouse \
    && mkdir -p /etc/gatehouse/certs /var/lib/gatehouse/audit \
    && chown 10001:10001 /var/lib/gatehouse/audit \
    && chmod 0750 /var/lib/gatehouse/audit

COPY --from=builder /out/gatehouse /usr/local/bin/gatehouse
# A commented reference configuration; the real one is mounted at /etc/gatehouse/gatehouse.toml.
COPY gatehouse.example.toml /etc/gatehouse/gatehouse.example.toml

USER 10001:10001

# 8443: TLS listener ([server] listen). 9090: Prometheus metrics ([metrics] listen).
EXPOSE 8443 9090

# SIGTERM starts the graceful drain ([server] shutdown_grace); SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gatehouse"]
CMD ["serve", "--config", "/etc/gatehouse/gatehouse.toml"]
