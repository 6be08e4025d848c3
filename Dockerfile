# Build: docker build -t event-sanitizer .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin event-sanitizer

# Distroless with glibc, OpenSSL and CA certificates (TLS to the brokers), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/event-sanitizer /usr/local/bin/event-sanitizer
COPY rules/customerio.yaml /etc/event-sanitizer/rules/customerio.yaml
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/event-sanitizer"]
CMD ["run", "--config", "/etc/event-sanitizer/config/config.yaml"]
