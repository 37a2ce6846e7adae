"""The systems under test, each started as its own process by the driver.

- `roger_node`: a roger node (``roger.Node(settings).start()``) serving the benchmark jobs.
- `celery_app`: run by the ``celery worker`` CLI.
- `dramatiq_app`: run by the ``dramatiq`` CLI.
- `kombu_consumer`: the raw ceiling, one plain kombu consumer.
"""
