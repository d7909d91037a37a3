# portcullis: sidecar, injector webhook and iptables init container in one image.
#
#   docker build -t ghcr.io/portcullis/portcullis:0.1.0 .
#
# Build stage: a release build of the `portcullis` binary (aws-lc-rs needs cmake
# and a C compiler; the Rust image has gcc).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# A workspace member (test helpers, never linked into the binary): the workspace
# does not load without it.
COPY testkit ./testkit
RUN cargo build --release --locked --bin portcullis \
 && install -D -m 0755 target/release/portcullis /out/portcullis

# Runtime stage: Debian slim rather than distroless, because the init container
# (`portcullis iptables --apply`) needs the iptables tools (nft backend and
# legacy). Everything else in the image is the binary and CA certificates.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1337 portcullis \
 && useradd --system --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
COPY policies /etc/portcullis/policies
# Non-root by default (the sidecar's UID, whose traffic iptables does not capture);
# the init container alone runs as root, with NET_ADMIN and NET_RAW only.
USER 1337:1337
EXPOSE 15000 15001 15006 8443
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run"]
