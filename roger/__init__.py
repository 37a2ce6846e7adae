"""roger: multi-tenant job processing on RabbitMQ."""
