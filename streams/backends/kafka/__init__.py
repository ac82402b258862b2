"""The Kafka backend: aiokafka's public consumer as the source, changelog topics as the
state backend."""
