"""waxflow: turn Kafka records into workflows (Kestra-style YAML flows on Bytewax)."""
