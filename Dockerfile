# syntax=docker/dockerfile:1
# The shipper and diagtool in a slim runtime image. Built in two stages: the toolchain image compiles
# (release, with line tables, and full debug info for our own crates, so CPU profiles and task
# dumps stay readable: do not strip the binaries), the runtime image only carries the two
# binaries, CA certificates and curl for the health check.
# Not built in CI here (no Docker engine on the CI machine); see docs/containers.md.

FROM rust:1-bookworm AS build
WORKDIR /src
# .cargo/config.toml comes along: it sets --cfg tokio_unstable, which the task registry needs.
COPY . .
RUN cargo build --release --locked -p shipper --bin shipper \
 && cargo build --release --locked -p diagtool --bin diagtool \
 && install -D -m 0755 target/release/shipper target/release/diagtool -t /out

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/shipper --create-home shipper
COPY --from=build /out/shipper /out/diagtool /usr/local/bin/
COPY docs/compose/shipper.toml /etc/shipper/shipper.toml
# Tailing Docker's json-file logs needs read access to /var/lib/docker/containers: run as root or
# give this user the group that can read them (docker-compose.yml runs it as root for that reason).
USER shipper
WORKDIR /var/lib/shipper
# 8401: /health /ready /metrics. The debug port stays on the container's loopback by default
# (reach it with `docker exec <container> diagtool watch`); publish it only with a debug_token.
EXPOSE 8401
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8401/health || exit 1
ENTRYPOINT ["shipper"]
CMD ["--config", "/etc/shipper/shipper.toml"]
