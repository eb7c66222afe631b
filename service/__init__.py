"""The HTTP service: ingestion signed per emitter key, health, metrics and route reads.

It sits above the engine's public API, beside `cli/`; `webinar-flows serve` starts it.
"""
