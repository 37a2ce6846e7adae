"""Tests of the `roger` package (they need RabbitMQ on 127.0.0.1:5672)."""
