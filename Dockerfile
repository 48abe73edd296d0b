# syntax=docker/dockerfile:1
# The Switchyard image: one binary, `switchyard`, with the roles serve, gateway, router and
# check-config. The Helm chart (charts/switchyard) runs it as `switchyard gateway|router
# --config …` with user and group 10001.
#
#   docker build -t switchyard:0.1.0 .
#   docker run --rm switchyard:0.1.0 --version

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build between builds (BuildKit); the binary is
# copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchyard \
    && install -D -m 0755 target/release/switchyard /out/switchyard

FROM debian:bookworm-slim
# ca-certificates: the connectors call the platforms' APIs over HTTPS, and rediss:// / amqps://.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin switchyard
COPY --from=build /out/switchyard /usr/local/bin/switchyard
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["switchyard"]
CMD ["--help"]
