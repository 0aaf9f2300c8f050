# Multi-stage: build the three binaries against the committed .sqlx query cache (no database
# needed at build time), then run them from a slim image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY . .
RUN cargo build --release --locked -p sms-ingress -p sms-worker -p sms-sim \
 && strip target/release/sms-ingress target/release/sms-worker target/release/sms-sim

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sms
COPY --from=build /src/target/release/sms-ingress /src/target/release/sms-worker /src/target/release/sms-sim /usr/local/bin/
USER 10001
ENV BIND_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
CMD ["sms-ingress", "serve"]
