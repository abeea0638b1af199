"""Instrumentation for observable_tasks: tracing, Prometheus metrics and structlog logs.

Everything here attaches to the core through the public middleware/observer seam; the core never
imports this package.
"""
