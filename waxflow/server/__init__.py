"""``waxflow server``: a web UI and JSON API over the execution history.

One concept per module: :mod:`.command` (the CLI subcommand, its checks, uvicorn),
:mod:`.app` (the Starlette application), :mod:`.pages` (server-rendered HTML),
:mod:`.api` (JSON endpoints and the OpenAPI description), :mod:`.history` (the index queries
both use), :mod:`.filters` (query parameters, checked once), :mod:`.security` (token, host,
CSRF, Content-Security-Policy), :mod:`.index_worker` (index access and the sync thread),
:mod:`.broker_view` (trigger records and consumer lag read from the broker),
:mod:`.replays` (flow files and replays), :mod:`.chart` (SVG), :mod:`.context` (shared
state). Templates and the few lines of own CSS/JS are package data.
"""
