//! The Grafana Loki sink: push API, JSON+gzip or protobuf+snappy, retries, adaptive concurrency.
