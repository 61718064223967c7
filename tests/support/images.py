"""Container images for testcontainers; the same versions as the local stack and docker-compose.yml."""

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:15"
