"""The status page: a web view of the cluster, served by a node on `http_port`.

Layer *web*, between the API and the CLI: it shows what `roger.info`
gathers from every live node and acts through `roger.pause`, `roger.resume`,
`roger.cancel`, `roger.retry_buried` and `roger.replay_rejected`. The node
starts its server process by name (`roger.node.web`), so no lower layer
imports this package.

- `roger.web.server`: the HTTP server (stdlib, bounded reads) and `serve`,
  the process main;
- `roger.web.routes`: what each path answers, and who may act;
- `roger.web.snapshot`: the cluster as the page shows it, one JSON object;
- `roger.web.rates`: done and failed per second over the last minute;
- ``static/``: the page (HTML, JS, CSS of our own; nothing from elsewhere).
"""
